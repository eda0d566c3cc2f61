#!/usr/bin/env python3
"""Peak memory and time of one `mpq-export` run, against the size of the FP32 model it quantizes.

    python tools/measure_run.py MODEL [mpq-export options...]

Runs `mpq-export MODEL ...` in a child process and prints its wall time, its peak resident memory
(the largest of the report's per-stage peaks, the 0.2 s samples below and getrusage's high-water
mark, which mpq-export resets per stage) and that peak divided by the FP32 weights'
size (an .onnx file with its external data, a diffusers UNet folder's weight files, or a pipeline
folder's unet/). While the child runs, its resident memory is sampled every 0.2 s and attributed to
the stage of its last log line ("[calibrate] ...", "[quantize] ..."), so the table at the end shows
which stage holds the memory; the run's report.json also lists each stage's time and peak.
"""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
import threading
import time


def fp32_bytes(model: str) -> int:
    if os.path.isfile(model):
        folder = os.path.dirname(os.path.abspath(model))
        import onnx

        m = onnx.load(model, load_external_data=False)
        locations = {e.value for t in m.graph.initializer for e in t.external_data if e.key == "location"}
        return os.path.getsize(model) + sum(os.path.getsize(os.path.join(folder, f)) for f in locations)
    unet = os.path.join(model, "unet") if os.path.isfile(os.path.join(model, "model_index.json")) else model
    return sum(os.path.getsize(os.path.join(unet, f)) for f in os.listdir(unet)
               if f.endswith((".safetensors", ".bin")))


def report_peaks(args: list[str]) -> dict[str, float]:
    """Per-stage peak RSS (MB) from the run's report.json, when -o names a single-budget output."""
    import json

    out = next((args[i + 1] for i, a in enumerate(args[:-1]) if a in ("-o", "--output")), None)
    try:
        with open(os.path.join(out, "report.json")) as f:
            return json.load(f).get("peak_rss_mb", {})
    except (TypeError, OSError, ValueError):
        return {}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if len(sys.argv) > 1 else 2)
    model, rest = sys.argv[1], sys.argv[2:]
    exe = os.path.join(os.path.dirname(sys.executable), "mpq-export")
    t0 = time.perf_counter()
    child = subprocess.Popen([exe, model, *rest], stderr=subprocess.PIPE, text=True, bufsize=1)
    stage = ["start"]
    peaks: dict[str, float] = {}

    def sample():
        while child.poll() is None:
            try:
                with open(f"/proc/{child.pid}/status") as f:
                    rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 2**20  # GiB
                peaks[stage[0]] = max(peaks.get(stage[0], 0.0), rss)
            except (OSError, StopIteration):
                pass
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for line in child.stderr:
        sys.stderr.write(line)
        m = re.match(r"\[([\w .:-]+?)\]", line.strip())
        if m:
            stage[0] = m.group(1)
    rc = child.wait()
    sampler.join()
    wall = time.perf_counter() - t0
    # mpq-export resets the kernel's high-water mark at every stage (report.json's per-stage peaks), so
    # getrusage's figure covers only the last stage: the peak is the largest of the report's per-stage
    # peaks (exact) and the samples (which also count mapped weight files)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # KiB on Linux
    peak = max([peak, *(g * 2**30 for g in peaks.values()), *(mb * 2**20 for mb in report_peaks(rest).values())])
    size = fp32_bytes(model)
    if peaks:
        print("\nresident memory by the stage of the last log line (GiB, sampled every 0.2 s):")
        for name, gib in peaks.items():
            print(f"  {name:28s} {gib:6.2f}  ({gib * 2**30 / size:.2f}x FP32)")
    print(f"\nmpq-export exit status {rc}, {wall:.0f} s; peak RSS {peak / 2**30:.2f} GiB; FP32 weights "
          f"{size / 2**30:.2f} GiB; peak / FP32 size = {peak / size:.2f}")
    sys.exit(rc)


if __name__ == "__main__":
    main()
