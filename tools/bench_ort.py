#!/usr/bin/env python3
"""Latency of the onnxruntime target against FP32 under onnxruntime's CPU provider, in one process.

    python tools/bench_ort.py [--model sd15-mini|digits|patches|MODEL] [--batch 2] [--resolution 32]
                              [--rounds 10] [--threads 0]

Quantizes the model with mpq-export's onnxruntime target (W8A8 everywhere the defaults allow; the
mixed 4.5-bit allocation; W8A8 with --float-conv-outputs, the form that leaves convolutions in
float) and with onnxruntime's own `quantize_static` (its defaults, and restricted to
Conv/MatMul/Gemm as ours), then times every model on the same inputs in one process: each round
runs every model once, in rotated order, and each model's latency is divided by FP32's in the same
round, so a noisy shared machine moves both sides of a ratio together. Prints min / median / max of
those ratios, the median latency, the weight bits counted from each file, and each model's noise
SQNR vs FP32 on the benchmark batch.

sd15-mini (the default) is Stable Diffusion 1.5's UNet layout at a fifth of its width (random
weights, tools/make_unet.py), at a 32x32 latent with 77 text tokens.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

from compare_peers import BUNDLED, calibration_feeds, count_bits, feeds_reader  # noqa: E402

from mpq_export.stages.allocate import AllocationSettings  # noqa: E402
from mpq_export.stages.calibrate import CalibrationSettings  # noqa: E402
from mpq_export.stages.inspect import inspect_model  # noqa: E402
from mpq_export.pipeline import PipelineConfig, prepare_model, run_pipeline  # noqa: E402
from mpq_export.runtime.ort import RuntimeSettings  # noqa: E402
from mpq_export.util.cache import default_cache_dir
from mpq_export.formats import QuantizeSettings  # noqa: E402
from mpq_export.stages.validate import ValidationSettings  # noqa: E402


def quantize_static_default(model_path: str, feeds: list[dict], out: str, op_types: list[str] | None) -> None:
    """onnxruntime's quantize_static as its documentation shows it: QDQ, per-channel weights, its default
    types (UINT8 activations, INT8 weights) and MinMax calibration."""
    from onnxruntime.quantization import QuantFormat, quantize_static

    quantize_static(model_path, out, feeds_reader(feeds), quant_format=QuantFormat.QDQ, per_channel=True,
                    op_types_to_quantize=op_types)


RUNTIME = None  # the --threads of this run (main)


def ours(model: str, workdir: str, name: str, budget: float, allocation: AllocationSettings,
         quantize: QuantizeSettings, calibration: CalibrationSettings):
    cfg = PipelineConfig(model=model, budgets=(budget,), out_dir=os.path.join(workdir, name), allocation=allocation,
                         target="onnxruntime", quantize=quantize, calibration=calibration,
                         validation=ValidationSettings(samples=2), runtime=RUNTIME,
                         build_engine="no", stability=False, act_costs=False, sample_grid=False)
    res = run_pipeline(cfg)
    return res, os.path.join(res.results[0].out_dir, "model.mpq.onnx")


def bench_feeds(info, batch: int, shape, seed: int = 123) -> dict[str, np.ndarray]:
    from mpq_export.runtime.ort import build_feeds
    from mpq_export.inputs.conditioning import load_conditioning
    from mpq_export.runtime.sampler import initial_noise

    cond, _ = load_conditioning(info, None, batch, seed, 77 if info.conditioning else None)
    return build_feeds(info, initial_noise(seed, batch, shape), 500, cond)


def time_models(paths: dict[str, str], feeds: dict, rounds: int, threads: int):
    """name -> (latencies [rounds], ratios to FP32 [rounds], output); FP32 must be the first entry."""
    import onnxruntime as ort

    def session(path: str):  # what a user gets: default options, all graph optimisations
        so = ort.SessionOptions()
        so.log_severity_level = 3
        if threads:
            so.intra_op_num_threads = threads
        return ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])

    sessions = {k: session(p) for k, p in paths.items()}
    outputs = {}
    for k, s in sessions.items():  # warm-up: onnxruntime prepacks weights on the first runs
        for _ in range(2):
            outputs[k] = s.run(None, feeds)[0]
    names = list(sessions)
    lat = {k: [] for k in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for k in order:
            t = time.perf_counter()
            sessions[k].run(None, feeds)
            lat[k].append(time.perf_counter() - t)
    base = np.array(lat[names[0]])
    return {k: (np.array(v), np.array(v) / base, outputs[k]) for k, v in lat.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="sd15-mini", help="sd15-mini, digits, patches, or an FP32 .onnx / diffusers folder")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--resolution", type=int, default=None, help="latent size (default: 32 for sd15-mini, else the model's)")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0: all cores)")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="mpq-bench-ort-")
    model = BUNDLED.get(args.model, args.model)
    res_ = args.resolution
    if args.model == "sd15-mini":
        from make_unet import make

        make("sd15-mini", os.path.join(work, "sd15-mini"))
        model = os.path.join(work, "sd15-mini", "unet")
        res_ = res_ or 32
    conditional = bool(inspect_model(prepare_model(PipelineConfig(model=model).model_request, default_cache_dir()).onnx_path).conditioning)
    calib = CalibrationSettings(steps=10, timesteps=2, samples=4, resolution=(res_, res_) if res_ else None,
                                seq_len=77 if conditional else None)
    global RUNTIME
    RUNTIME = RuntimeSettings(threads=args.threads)

    t0 = time.perf_counter()
    w8 = AllocationSettings(bits=(8, 16), method="uniform")
    qs = QuantizeSettings()
    res, paths_w8 = ours(model, work, "w8a8", 8.01, w8, qs, calib)
    info, stats = res.info, res.stats
    paths = {"FP32 (onnxruntime, all graph optimisations)": res.model_path,
             "ours W8A8, onnxruntime target": paths_w8}
    _, paths["ours MPQ 4.5 bits, onnxruntime target"] = ours(model, work, "mpq45", 4.5,
                                                             AllocationSettings(), qs, calib)
    _, paths["ours W8A8, --float-conv-outputs"] = ours(model, work, "w8a8-float-conv", 8.01, w8,
                                                       replace(qs, integer_conv=False), calib)
    feeds = calibration_feeds(info, stats)
    qs_all = os.path.join(work, "quantize_static.onnx")
    quantize_static_default(res.model_path, feeds, qs_all, None)
    paths["onnxruntime quantize_static (its defaults: every op)"] = qs_all
    qs_w = os.path.join(work, "quantize_static_weighted.onnx")
    quantize_static_default(res.model_path, feeds, qs_w, ["Conv", "ConvTranspose", "MatMul", "Gemm"])
    paths["onnxruntime quantize_static (Conv/MatMul/Gemm)"] = qs_w
    print(f"quantized in {time.perf_counter() - t0:.0f} s; timing {len(paths)} models, {args.rounds} rounds", flush=True)

    shape = tuple(stats.inputs[info.sample.name].shape[2:])
    feeds1 = bench_feeds(info, args.batch, shape)
    timed = time_models(paths, feeds1, args.rounds, args.threads)
    ref = timed[next(iter(timed))][2].astype(np.float64)
    print(f"\nmodel: {args.model} ({sum(l.params for l in info.layers) / 1e6:.1f} M weights in {len(info.layers)} layers), "
          f"batch {args.batch}, sample {list(shape)}, onnxruntime threads {args.threads or os.cpu_count()}")
    print(f"{'model':56s} {'bits':>5s} {'median ms':>9s} {'ratio min / median / max':>26s} {'SQNR dB':>8s}")
    for k, (lat, ratio, out) in timed.items():
        err = ((out - ref) ** 2).sum()
        sq = 10 * np.log10((ref ** 2).sum() / err) if err > 0 else float("inf")
        print(f"{k:56s} {count_bits(paths[k], info):5.2f} {np.median(lat) * 1e3:9.1f} "
              f"{ratio.min():8.2f} / {np.median(ratio):5.2f} / {ratio.max():5.2f} {sq:8.1f}")
    import shutil

    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
