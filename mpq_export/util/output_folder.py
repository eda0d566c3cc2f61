"""Output folders: checked before any work, written under a temporary name and renamed into place
only when complete, and never replacing a folder that holds anyone else's files.

A failed or interrupted run never leaves a folder that looks finished; scratch folders of killed
runs are removed by the next run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

from mpq_export.util.cache import remove_left_by_dead_runs
from mpq_export.util.errors import MPQError

OUTPUT_MODEL = "model.mpq.onnx"
FP32_FOLDER = "fp32"  # the FP32 export of a run without a cache, which the report's commands use

# Every file an output folder of ours can hold. A folder is replaced only when it holds nothing else
# and its report.json says mpq-export wrote it: any other folder may be a user's, and is never touched.
OUTPUT_FILES = frozenset({OUTPUT_MODEL, OUTPUT_MODEL + ".data", "model.mpq.plan", "model.mpq.layers.json", "report.json",
                          "report.md", "allocation.json", "bits.png", "validation.png", "importance.png", "samples.png",
                          "validation_inputs.npz", "polygraphy_data.py", "fp32_outputs.json", "summary.json",
                          "summary.md", "pareto.png"})


HANDOFF_FOLDER = "trt-demo"  # --emit trt-demo (handoffs/trt_demo.py): <name>.opt/model.onnx and its weights
OPTIMUM_FOLDER = "optimum"  # --emit optimum: an Optimum ONNX Runtime pipeline folder (model_index.json, unet/...)


def _is_our_trt_demo(folder: str) -> bool:
    for name in os.listdir(folder):
        sub = os.path.join(folder, name)
        if name not in ("unet.opt", "unetxl.opt") or not os.path.isdir(sub) or os.path.islink(sub):
            return False
        for f in os.listdir(sub):
            if not (f == "model.onnx" or f.endswith(".data")) or not os.path.isfile(os.path.join(sub, f)):
                return False
    return True


def is_our_output(folder: str) -> bool:
    """True when `folder` is an mpq-export output (single budget, or a budget list's parent) and nothing more."""
    import json

    try:
        entries = os.listdir(folder)
    except OSError:
        return False
    for e in entries:
        p = os.path.join(folder, e)
        if e.startswith("budget-") and os.path.isdir(p) and not os.path.islink(p):
            if not is_our_output(p):
                return False
        elif e == FP32_FOLDER and os.path.isdir(p) and not os.path.islink(p):
            inside = os.listdir(p)
            if "model.onnx" not in inside or not all(os.path.isfile(os.path.join(p, f)) and
                                                     not os.path.islink(os.path.join(p, f)) for f in inside):
                return False
        elif e == HANDOFF_FOLDER and os.path.isdir(p) and not os.path.islink(p):
            if not _is_our_trt_demo(p):
                return False
        elif e == OPTIMUM_FOLDER and os.path.isdir(p) and not os.path.islink(p):
            if not os.path.isfile(os.path.join(p, "model_index.json")) or not os.path.isfile(
                    os.path.join(p, "unet", "model.onnx")) or any(os.path.islink(os.path.join(r, f))
                                                                  for r, _, fs in os.walk(p) for f in fs):
                return False
        elif e not in OUTPUT_FILES or not os.path.isfile(p) or os.path.islink(p):
            return False
    report = os.path.join(folder, "report.json")
    summary = os.path.join(folder, "summary.json")
    if os.path.isfile(report):
        try:
            with open(report) as f:
                return json.load(f).get("tool") == "mpq-export"
        except (OSError, ValueError, AttributeError):
            return False
    return os.path.isfile(summary) and any(e.startswith("budget-") for e in entries)


def check_out_dir(out: str) -> None:
    absolute = os.path.abspath(out)
    parent = os.path.dirname(absolute) or "."
    if absolute == os.getcwd() or absolute == parent:
        raise MPQError(f"-o {out} is the working directory or a root; the output is a folder of its own: give a new "
                       f"folder name (e.g. -o out.mpq)")
    if os.path.exists(out) and not os.path.isdir(out):
        raise MPQError(f"output path {out} exists and is not a folder; choose another -o")
    if os.path.isdir(out) and os.listdir(out) and not is_our_output(out):
        raise MPQError(f"output folder {out} holds files mpq-export did not write; choose another -o or empty it "
                       f"(only an earlier mpq-export output is replaced)")
    probe_dir = parent
    while not os.path.exists(probe_dir):
        probe_dir = os.path.dirname(probe_dir)
    if not os.path.isdir(probe_dir):
        raise MPQError(f"cannot make the output folder {out}: {probe_dir} is a file; choose another -o")
    if not os.access(probe_dir, os.W_OK | os.X_OK):
        raise MPQError(f"cannot write the output folder {out} ({probe_dir} is not writable); choose another -o")
    # really try it (read-only mounts, /proc, quotas): before calibration, not after it; in the nearest folder
    # that exists, so that a run refused later leaves no folders it made
    try:
        probe = tempfile.mkdtemp(prefix=f".{os.path.basename(absolute)}.probe-{os.getpid()}-", dir=probe_dir)
        with open(os.path.join(probe, "w"), "wb") as f:
            f.write(b"0" * 4096)
        shutil.rmtree(probe)
    except OSError as e:
        raise MPQError(f"cannot write the output folder {out} ({e.strerror or e}); choose another -o") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


SCRATCH_PREFIX = "mpq-export-"  # scratch folders in the system temp dir: mpq-export-KIND-PID-xxxx


def remove_stale_scratch() -> None:
    """Scratch folders of runs that were killed (SIGKILL, power loss) and whose process is gone."""
    import re

    remove_left_by_dead_runs(tempfile.gettempdir(), rf"^{re.escape(SCRATCH_PREFIX)}[a-z0-9]+-(\d+)-")


def _remove_stale_temporaries(parent: str, base: str) -> None:
    """Temporary folders of runs killed with SIGKILL (.BASE.tmp-PID-xxxx) whose process is gone."""
    import re

    remove_left_by_dead_runs(parent, rf"^\.{re.escape(base)}\.(?:tmp|probe)-(\d+)-")


def _publish(tmp: str, out: str) -> None:
    """Move a finished temporary folder into place, replacing an earlier mpq-export output."""
    old = None
    if os.path.exists(out):
        if os.path.isdir(out) and not os.listdir(out):  # the empty folder the user made for it
            os.rmdir(out)
        elif not is_our_output(out):  # someone put files there while we ran: keep them, and say so
            raise MPQError(f"output folder {out} changed during the run and now holds files mpq-export did not write; "
                           f"nothing was replaced: choose another -o")
        else:
            old = f"{out}.old-{os.getpid()}"
            os.replace(out, old)
    os.replace(tmp, out)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def output_folders(model: str, out_dir: str | None, budgets: tuple[float, ...]) -> tuple[str, list[str]]:
    """The output root and one folder per budget (budget-B inside the root for a budget list), checked before
    any work: the root must be new, empty or an earlier mpq-export output, which the run replaces whole (so
    a rerun with other budgets never leaves the first run's folders beside its own)."""
    stem = os.path.splitext(os.path.basename(os.path.normpath(model)))[0]
    # normalised: "out/" names the folder itself, not a place inside it (out/.old-PID)
    out_root = os.path.normpath(out_dir) if out_dir else os.path.join(os.getcwd(), f"{stem}.mpq")
    if os.path.islink(out_root):
        # a link to an earlier output: written through, so the link keeps pointing at the new one (replacing
        # the link itself would leave the earlier output where it was and a stray link beside it)
        target = os.path.realpath(out_root)
        if not os.path.isdir(target):
            raise MPQError(f"-o {out_dir} is a symbolic link to {target}, which is not a folder; give a folder")
        out_root = target
    multi = len(budgets) > 1
    out_dirs = [os.path.join(out_root, f"budget-{b:g}") if multi else out_root for b in budgets]
    check_out_dir(out_root)
    return out_root, out_dirs


@contextlib.contextmanager
def staging_folder(out: str):
    """A temporary folder beside `out`, renamed into place when the block completes, removed if it fails:
    an interrupted run never leaves a folder that looks finished."""
    parent = os.path.dirname(os.path.abspath(out))
    made = []  # the folders above the output this run creates: removed again if it fails
    p = parent
    while not os.path.exists(p):
        made.append(p)
        p = os.path.dirname(p)
    os.makedirs(parent, exist_ok=True)
    _remove_stale_temporaries(parent, os.path.basename(out))
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-{os.getpid()}-", dir=parent)
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; an output folder honours the umask like any other
    try:
        yield tmp
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for d in made:  # innermost first; only while empty (someone else may have put files there meanwhile)
            try:
                os.rmdir(d)
            except OSError:
                break
        raise
