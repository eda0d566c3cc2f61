#!/usr/bin/env python3
"""Time the mixed-precision TensorRT engine against an FP16 engine of the same model.

    python tools/bench_engine.py OUT_DIR [--batch 2] [--iters 200]

OUT_DIR is an mpq-export output folder of the tensorrt target (model.mpq.onnx; its report names
the FP32 model). Both engines are built here with the same settings (strongly typed; the FP16
engine from the FP16 graph of the FP32 model) and timed with Polygraphy's TrtRunner in one run,
so their ratio is comparable. Prints median latency of each, the speed-up, and engine sizes.
Without TensorRT and a GPU it prints why and exits 0 (nothing to measure here).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mpq_export.runtime.engine import EngineSettings, build_engine, tensorrt_status  # noqa: E402
from mpq_export.targets.fp16_graph import to_fp16_graph  # noqa: E402
from mpq_export.stages.inspect import inspect_model  # noqa: E402
from mpq_export.util.onnx_io import load_for_edit, save_model  # noqa: E402


def time_engine(path: str, feeds: dict, iters: int) -> float:
    from polygraphy.backend.trt import EngineFromPath, TrtRunner

    with TrtRunner(EngineFromPath(path)) as runner:
        for _ in range(10):
            runner.infer(feeds)
        times = []
        for _ in range(iters):
            runner.infer(feeds)
            times.append(runner.last_inference_time())
    return float(np.median(times)) * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--iters", type=int, default=200)
    args = ap.parse_args()
    ok, why = tensorrt_status()
    if not ok:
        print(f"skipped: {why}")
        return 0
    rep = json.load(open(os.path.join(args.out_dir, "report.json")))
    info = inspect_model(rep["model"])
    c, h, w = np.load(os.path.join(args.out_dir, "validation_inputs.npz"))[info.sample.name].shape[2:]
    settings = EngineSettings(opt_batch=args.batch, max_batch=max(8, args.batch))
    with tempfile.TemporaryDirectory() as d:
        fp16_onnx = os.path.join(d, "model.fp16.onnx")
        save_model(to_fp16_graph(load_for_edit(rep["model"])), fp16_onnx)
        fp16 = build_engine(fp16_onnx, info, (c, h, w), settings, os.path.join(d, "fp16.plan"))
        mixed = build_engine(os.path.join(args.out_dir, "model.mpq.onnx"), info, (c, h, w), settings,
                             os.path.join(d, "mixed.plan"))
        rng = np.random.default_rng(0)
        feeds = {info.sample.name: rng.standard_normal((args.batch, c, h, w)).astype(np.float32),
                 info.timestep.name: np.full((args.batch,), 500, dtype=info.timestep.dtype)}
        for spec in info.conditioning:
            feeds[spec.name] = rng.standard_normal(spec.concrete(args.batch, {1: 77})).astype(spec.dtype)
        t16 = time_engine(fp16.path, feeds, args.iters)
        tmix = time_engine(mixed.path, feeds, args.iters)
        s16, smix = os.path.getsize(fp16.path), os.path.getsize(mixed.path)
    import subprocess

    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
    print(f"GPU: {gpu}; {why}; batch {args.batch}, {h}x{w}, median of {args.iters}")
    print(f"FP16 engine:  {t16:.3f} ms, {s16 / 1e6:.2f} MB")
    print(f"mixed engine: {tmix:.3f} ms, {smix / 1e6:.2f} MB ({rep['achieved_bits']:.2f} avg weight bits)")
    print(f"speed-up {t16 / tmix:.2f}x, size ratio {smix / s16:.2f}; mixed-engine layer precisions: {mixed.layer_precisions}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
