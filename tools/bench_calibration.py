#!/usr/bin/env python3
"""What calibration costs over the bare sampler, and what sketched Grams move, in one process.

    python tools/bench_calibration.py [--model digits|patches|sd15-mini|MODEL] [--samples 32] [--steps 50]
                                      [--timesteps 10] [--resolution R] [--sketch-dims 4096,8192]

1. time(calibrate) / time(the bare onnxruntime trajectory): the same FP32 model, N, steps, rows per
   call (calibrate's memory-budget chunk), threads and session options; the bare run only predicts.
   Both include loading their onnxruntime session; calibrate also hashes the model (its cache key).
   Both are timed --repeats times (2), alternating, and the ratio of the faster runs is printed,
   with where calibrate's time went (CalibrationStats.time_split: hashing, session, onnxruntime
   calls, GPTQ statistics, histograms, Grams) beside the bare run's session and calls.
2. ORM with Grams from sketches (--gram-mem-mb 0, each --sketch-dims value) against exact Grams of
   the same rows: the largest change of any layer's aggregated importance theta and of any per-step
   ORM score, and how many layers the allocation moves at 4.5 bits (onnxruntime) and 7.5 bits
   (tensorrt).

sd15-mini is Stable Diffusion 1.5's UNet layout at a fifth of its width (random weights,
tools/make_unet.py) at 32x32 latents with 77 random-normal text tokens.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

from compare_peers import BUNDLED  # noqa: E402

from mpq_export.stages.allocate import allocate  # noqa: E402
from mpq_export.stages.calibrate import CalibrationSettings, calibrate, sample_shape  # noqa: E402
from mpq_export.stages.inspect import inspect_model  # noqa: E402
from mpq_export.stages.orm import OrmSettings, compute_importance  # noqa: E402
from mpq_export.pipeline import PipelineConfig, prepare_model  # noqa: E402
from mpq_export.runtime.ort import RuntimeSettings  # noqa: E402
from mpq_export.util.cache import default_cache_dir
from mpq_export.runtime.ort import ort_session, run_model  # noqa: E402
from mpq_export.inputs.conditioning import load_conditioning
from mpq_export.runtime.sampler import DDIMSampler, NoiseSchedule, guided, initial_noise  # noqa: E402


def bare_trajectory(info, settings: CalibrationSettings, schedule: NoiseSchedule, chunk: int,
                    runtime: RuntimeSettings) -> tuple[float, dict]:
    """Seconds for the sampler alone: the plain FP32 model over the same rows, `chunk` rows per call,
    loading the model included (calibrate's time includes loading its own session too); and the
    seconds of its session load and of its onnxruntime calls."""
    t0 = time.perf_counter()
    sess = ort_session(info.path, runtime.threads, os.path.dirname(info.path) if info.has_external_data else None,
                       low_memory=True, device=runtime.device)
    split = {"session": time.perf_counter() - t0, "onnxruntime": 0.0}
    n = settings.samples
    cond, _ = load_conditioning(info, None, n, settings.seed, settings.seq_len, settings.guidance)

    def call(x, t, j):
        t1 = time.perf_counter()
        (eps,) = run_model(sess, info, [info.output], x[j: j + chunk], t, {k: v[j: j + chunk] for k, v in cond.items()})
        split["onnxruntime"] += time.perf_counter() - t1
        return eps

    def rows(x, t, i):
        return np.concatenate([call(x, t, j) for j in range(0, x.shape[0], chunk)])

    shape = sample_shape(info, settings.resolution)
    DDIMSampler(schedule, settings.steps).sample(initial_noise(settings.seed, n, shape),
                                                 guided(rows, settings.guidance))
    return time.perf_counter() - t0, split


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="digits", help="digits, patches, sd15-mini, or an FP32 .onnx / diffusers folder")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--timesteps", type=int, default=10)
    ap.add_argument("--resolution", type=int, default=None)
    ap.add_argument("--sketch-dims", default="4096,8192")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--no-sketch-study", action="store_true")
    ap.add_argument("--no-gptq-statistics", action="store_true",
                    help="calibrate without the layers' input statistics (what only --weight-rounding gptq needs)")
    ap.add_argument("--repeats", type=int, default=2,
                    help="timed runs of each, alternating; the faster of each is compared (1 for models that take minutes)")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="mpq-bench-calib-")
    try:
        model = BUNDLED.get(args.model, args.model)
        res = args.resolution
        if args.model == "sd15-mini":
            from make_unet import make

            make("sd15-mini", os.path.join(work, "m"))
            model, res = os.path.join(work, "m", "unet"), res or 32
        prepared = prepare_model(PipelineConfig(model=model).model_request, default_cache_dir())
        info = inspect_model(prepared.onnx_path)
        schedule = NoiseSchedule.from_config(prepared.scheduler_config)
        s = CalibrationSettings(steps=args.steps, timesteps=args.timesteps, samples=args.samples,
                                resolution=(res, res) if res else None, seq_len=77 if info.conditioning else None)
        runtime = RuntimeSettings(threads=args.threads)
        cal_t, bare_t, stats, splits = [], [], None, []
        for _ in range(max(1, args.repeats)):  # alternate, keep the faster of each: a shared machine is noisy
            t0 = time.perf_counter()
            run = calibrate(info, s, schedule, runtime=runtime, input_statistics=not args.no_gptq_statistics)  # no cache
            cal_t.append(time.perf_counter() - t0)
            bare, bare_split = bare_trajectory(info, s, schedule, run.rows_per_call, runtime)
            bare_t.append(bare)
            splits.append((run.time_split, bare_split))
            if len(cal_t) == 1 or cal_t[-1] < min(cal_t[:-1]):
                stats = run
        print(f"\nmodel {args.model}: {len(info.layers)} layers, N={args.samples}, {args.steps} steps, K={args.timesteps}, "
              f"sample {list(stats.inputs[info.sample.name].shape[2:])}, {stats.rows_per_call} rows per call, Grams "
              f"{'exact' if not stats.gram_sketch_dim else f'sketched ({stats.gram_sketch_dim})'}")
        print(f"calibrate {min(cal_t):.1f} s, bare trajectory {min(bare_t):.1f} s: "
              f"time(calibrate) / time(bare) = {min(cal_t) / min(bare_t):.2f}  (runs: "
              f"{', '.join(f'{c:.1f}/{b:.1f}' for c, b in zip(cal_t, bare_t))} s)")
        cal_split, bare_split = splits[int(np.argmin(cal_t))]
        print("where calibrate's time went (s; its faster run): " + ", ".join(
            f"{part} {sec:.1f}" + (f" (bare {bare_split[part]:.1f})" if part in bare_split else "")
            for part, sec in cal_split.items()))
        if args.no_sketch_study:
            return
        exact = stats if not stats.gram_sketch_dim else calibrate(info, replace(s, gram_mem_mb=1 << 20), schedule, runtime=runtime,
                                                                input_statistics=not args.no_gptq_statistics)
        orm = OrmSettings()
        a = compute_importance(exact.grams, exact.timesteps, exact.layer_names, orm, schedule.num_train_timesteps)
        allocs = {}
        for target, budget in (("onnxruntime", 4.5), ("tensorrt", 7.5)):
            allocs[target] = allocate(info.layers, budget, target, theta=a.theta).formats
        for m in [int(x) for x in args.sketch_dims.split(",") if x]:
            sk = calibrate(info, replace(s, gram_mem_mb=0, sketch_dim=m), schedule, runtime=runtime)
            b = compute_importance(sk.grams, sk.timesteps, sk.layer_names, orm, schedule.num_train_timesteps)
            moved = {t: sum(f != g for f, g in zip(
                allocate(info.layers, bud, t, theta=b.theta).formats, allocs[t]))
                for t, bud in (("onnxruntime", 4.5), ("tensorrt", 7.5))}
            print(f"sketch {m:5d}: max |theta - exact| = {np.abs(a.theta - b.theta).max():.4f} "
                  f"(theta spans {a.theta.min():.3f}..{a.theta.max():.3f}), max |ORM score - exact| per step = "
                  f"{np.nanmax(np.abs(a.gamma_per_t - b.gamma_per_t)):.4f}; layers moved: "
                  f"{moved['onnxruntime']} of {len(info.layers)} at 4.5 bits (onnxruntime), "
                  f"{moved['tensorrt']} at 7.5 bits (tensorrt)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
