#!/usr/bin/env python3
"""Peak memory and time of calibration on a 6.8 M-parameter UNet2DModel (32x32, attention).

    python tools/measure_calib_memory.py [--samples 32] [--timesteps 10] [--steps 50]

Exports a random-weight UNet (blocks 64/128/128, 2 layers per block) in one subprocess, then
calibrates it in a fresh subprocess (the default K=10 of 50 steps, N=32) and prints that process's
peak RSS next to what keeping every layer's activations would take (what onnxruntime's entropy or
percentile calibrators store). The target is < 2 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))

EXPORT = """
import sys, torch
sys.path.insert(0, {root!r})
from diffusers import UNet2DModel
from mpq_export.inputs.export import export_module
torch.manual_seed(0)
m = UNet2DModel(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(64, 128, 128), layers_per_block=2,
                down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
                up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"))
export_module(m, {path!r})
print(sum(p.numel() for p in m.parameters()))
"""

CALIBRATE = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
import numpy as np
from mpq_export.stages.calibrate import CalibrationSettings, calibrate
from mpq_export.stages.inspect import inspect_model
from mpq_export.runtime.sampler import NoiseSchedule
info = inspect_model({path!r})
t = time.perf_counter()
s = calibrate(info, CalibrationSettings(steps={steps}, timesteps={k}, samples={n}), NoiseSchedule())
print(json.dumps({{"seconds": time.perf_counter() - t, "layers": len(info.layers), "grams_bytes": int(s.grams.nbytes)}}))
"""

PER_SAMPLE = """
import json, sys
sys.path.insert(0, {root!r})
import onnx, numpy as np
from mpq_export.stages.inspect import inspect_model
from mpq_export.runtime.ort import ort_session, build_feeds
info = inspect_model({path!r})
m = onnx.load({path!r})
for l in info.layers:
    m.graph.output.append(onnx.helper.make_empty_tensor_value_info(l.output))
sess = ort_session(m.SerializeToString())
outs = sess.run([l.output for l in info.layers], build_feeds(info, np.zeros((1, 3, 32, 32), np.float32), 500, {{}}))
print(sum(o.nbytes for o in outs))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--timesteps", type=int, default=10)
    ap.add_argument("--steps", type=int, default=50)
    args = ap.parse_args()
    root = os.path.dirname(HERE)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "unet.onnx")
        params = int(subprocess.run([sys.executable, "-c", EXPORT.format(root=root, path=path)], check=True,
                                    capture_output=True, text=True).stdout.split()[-1])
        per_sample = int(subprocess.run([sys.executable, "-c", PER_SAMPLE.format(root=root, path=path)], check=True,
                                        capture_output=True, text=True).stdout.split()[-1])
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        p = subprocess.run([sys.executable, "-c", CALIBRATE.format(root=root, path=path, steps=args.steps, k=args.timesteps,
                                                               n=args.samples)], check=True, capture_output=True, text=True)
        peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        res = json.loads(p.stdout.strip().splitlines()[-1])
    naive = per_sample * args.samples * args.timesteps
    print(f"model: UNet2DModel 64/128/128 x2, {params / 1e6:.2f} M parameters, 32x32, {res['layers']} quantizable layers")
    print(f"calibration: {args.steps} DDIM steps, K={args.timesteps} profiled, N={args.samples}: {res['seconds']:.1f} s")
    print(f"peak RSS of the calibrating process: {peak_kb / 1024:.0f} MB (target < 2048 MB)"
          + ("" if peak_kb >= before else ""))
    print(f"kept statistics (Grams): {res['grams_bytes'] / 2**20:.1f} MB; keeping every layer output instead: "
          f"{naive / 2**30:.2f} GB ({per_sample / 2**20:.1f} MB per sample per step)")


if __name__ == "__main__":
    main()
