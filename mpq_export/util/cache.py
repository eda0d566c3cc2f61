"""The on-disk cache: content hashes for keys, and entries written atomically that never fail a run.

Every cache entry (exported models, calibration statistics, sensitivity scores, encoded prompts, the
file-hash memo) is written through `write_entry`: into a temporary name in the same folder, then
renamed, so a reader never sees half an entry; a full disk or read-only folder is a warning, never a
failed run. Where the cache lives: $MPQ_EXPORT_CACHE, else ~/.cache/mpq-export (`default_cache_dir`).
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from typing import Callable

from mpq_export.util.errors import MPQError
from mpq_export.util.onnx_io import external_data_problem, load_onnx
from mpq_export.util.progress import log


def default_cache_dir() -> str:
    return os.environ.get("MPQ_EXPORT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "mpq-export")


def temporary_name(path: str, suffix: str = "") -> str:
    """A per-process temporary name beside `path` (same file system: the rename is atomic)."""
    return f"{path}.tmp-{os.getpid()}{suffix}"


@contextmanager
def atomic_path(path: str, suffix: str = ""):
    """Yield a temporary path to write; on success it replaces `path` at once, on failure it is removed."""
    tmp = temporary_name(path, suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if os.path.isdir(tmp) and not os.path.islink(tmp):
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        elif os.path.lexists(tmp):
            os.remove(tmp)
        raise


def write_entry(path: str, write: Callable[[str], None], what: str, suffix: str = "", quiet: bool = False) -> bool:
    """Write a cache entry with `write(tmp_path)`, atomically; False (and a warning unless `quiet`) when the
    cache cannot take it: the cache is an optimisation and never fails a run."""
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with atomic_path(path, suffix) as tmp:
            write(tmp)
        return True
    except OSError as e:
        if not quiet:
            log.warning("could not write the %s %s (%s); continuing without it", what, path, e.strerror or e)
        return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def remove_left_by_dead_runs(folder: str, pattern: str, what: str = "") -> None:
    """Remove the entries of `folder` whose name matches `pattern` (its first group: a process id) when that
    process is gone: temporaries of runs killed mid-write (SIGKILL, power loss), never a live run's."""
    import re
    import shutil

    rx = re.compile(pattern)
    try:
        entries = os.listdir(folder)
    except OSError:
        return
    for e in entries:
        m = rx.search(e)
        if not m or int(m.group(1)) == os.getpid() or pid_alive(int(m.group(1))):
            continue
        path = os.path.join(folder, e)
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
            if what:
                log.info("[%s] removed %s, left by a run that was killed", what, path)
        except OSError:
            pass  # a read-only folder keeps it; nothing depends on it


def remove_stale_temporaries(cache_dir: str) -> None:
    """Temporary cache entries (NAME.tmp-PID...) of killed runs: an interrupted export would otherwise
    keep gigabytes in the cache for good."""
    remove_left_by_dead_runs(cache_dir, r"\.tmp-(\d+)", "cache")


def is_writable(folder: str) -> bool:
    """Whether entries can be written into `folder` (created if missing): tried, not guessed from modes
    (read-only mounts, quotas)."""
    import tempfile

    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-"):
            pass
        return True
    except OSError:
        return False


def _dump_json(obj, path: str) -> None:
    with open(path, "w") as f:
        json.dump(obj, f)


def write_json_entry(path: str, obj, what: str) -> bool:
    return write_entry(path, lambda tmp: _dump_json(obj, tmp), what)


_HASH_MEMO = "file-hashes.json"


def file_sha256(path: str, memo_dir: str | None = None) -> str:
    """SHA-256 of a file's content. Multi-GB weights are hashed once: the digest is remembered in
    `memo_dir` under (real path, size, mtime, inode), so an edited or replaced file is hashed again."""
    st = os.stat(path)
    key = f"{os.path.realpath(path)}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"
    memo_path = os.path.join(memo_dir, _HASH_MEMO) if memo_dir else None
    memo = {}
    if memo_path and os.path.exists(memo_path):
        try:
            with open(memo_path) as f:
                memo = json.load(f)
        except (OSError, ValueError):
            memo = {}
        if isinstance(memo, dict) and isinstance(memo.get(key), str):
            return memo[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    digest = h.hexdigest()
    if memo_path and st.st_size >= (1 << 26):  # only large files are worth remembering
        memo = memo if isinstance(memo, dict) else {}
        memo[key] = digest
        write_entry(memo_path, lambda tmp: _dump_json(memo, tmp), "file-hash memo", quiet=True)
    return digest


def model_sha256(path: str, memo_dir: str | None = None) -> str:
    """Hash of the model's content: the .onnx file and every external data file it uses (by content,
    so a fine-tuned model saved with the same file sizes never reuses another model's statistics)."""
    h = hashlib.sha256(file_sha256(path, memo_dir).encode())
    folder = os.path.dirname(os.path.abspath(path))
    from onnx import external_data_helper

    model = load_onnx(path, load_weights=False)
    problem = external_data_problem(model, folder)
    if problem:
        raise MPQError(f"{path}: {problem}")
    for loc in sorted({external_data_helper.ExternalDataInfo(t).location for t in model.graph.initializer
                       if external_data_helper.uses_external_data(t)}):
        h.update(f"{loc}:{file_sha256(os.path.join(folder, loc), memo_dir)}".encode())
    return h.hexdigest()
