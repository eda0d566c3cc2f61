#!/usr/bin/env python3
"""The quality table: MPQ (ORM) against other allocations at the same average bits, on the
bundled trained digits DDPM. Writes quality.json and quality.png under --out (docs/ by default); `--table-only`
prints the Markdown table of docs/quality.md from an earlier run's quality.json.

For budgets 4.5, 5 and 6 average weight bits (and W8A8 everywhere but the FP16 conv_in, as a reference point), with one
calibration, one set of seeds and one sampler (50-step DDIM) for every method:
  orm            the paper's scorer (OMPQ's biased linear-CKA ORM), the 0/1 program
  orm-unbiased   the same with the unbiased HSIC estimator (mpq-export's default since this table)
  sensitivity    measured per-layer output error (`--importance sensitivity`), minimised
  uniform        every unpinned layer at the largest candidate <= budget (W4A8 with 8-bit pins)
  smallest-first 8 bits to the smallest layers first until the budget is used
  random         10 random feasible allocations at the budget (median and spread)
Metrics (onnxruntime target, FP32 graph + Q/DQ, on --samples held-back seeds):
  digits-feature FID: Frechet distance in the 64-d hidden features of a small MLP classifier
      trained here on the same digits (NOT Inception FID; no Inception weights are reachable);
      reference = the 1,797 real digits; "+-" is the std over 20 bootstrap resamples of the samples;
  sample PSNR vs FP32 from identical seeds (mean +- standard error over samples);
  mean per-timestep noise-prediction SQNR at the 10 profiled steps of the FP32 trajectory.

    python tools/evaluate.py [--samples 256] [--out docs]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mpq_export.stages.act_ranges import ActCalibSettings, choose_ranges  # noqa: E402
from mpq_export.stages.allocate import AllocationSettings, allocate, candidates  # noqa: E402
from mpq_export.stages.calibrate import CalibrationSettings, calibrate  # noqa: E402
from mpq_export.inputs.demo import demo_model  # noqa: E402
from mpq_export.stages.inspect import inspect_model  # noqa: E402
from mpq_export.stages.orm import OrmSettings, compute_importance  # noqa: E402
from mpq_export.pipeline import PipelineConfig, prepare_model  # noqa: E402
from mpq_export.util.cache import default_cache_dir
from mpq_export.formats import QuantizeSettings  # noqa: E402
from mpq_export.stages.quantize import quantize  # noqa: E402
from mpq_export.runtime.ort import build_feeds, ort_session  # noqa: E402
from mpq_export.runtime.sampler import DDIMSampler, NoiseSchedule, initial_noise  # noqa: E402
from mpq_export.stages.sensitivity import measure_sensitivity  # noqa: E402
from mpq_export.util.metrics import sqnr_db  # noqa: E402

EVAL_SEED = 50_000  # disjoint from calibration (0..31) and validation (10,000..)


def digits_features():
    """(feature function, real features): a 128-64 MLP on the 16x16 digits; features = 2nd hidden layer."""
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import torch

    from train_reference import digits_16x16

    x = digits_16x16().reshape(-1, 256).numpy()
    y = load_digits().target
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(x))
    tr, te = idx[:1500], idx[1500:]
    clf = MLPClassifier(hidden_layer_sizes=(128, 64), max_iter=400, random_state=0).fit(x[tr], y[tr])
    acc = clf.score(x[te], y[te])
    del torch

    def feats(imgs):
        h = np.clip(imgs.reshape(len(imgs), -1), -1, 1)
        for W, b in zip(clf.coefs_[:2], clf.intercepts_[:2]):
            h = np.maximum(h @ W + b, 0)
        return h

    return feats, feats(x), acc


def fid(a, b):
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # tr sqrt(s1 s2) = sum of sqrt of the eigenvalues of s1 s2 (real and >= 0 for PSD s1, s2); robust where
    # dead ReLU units make the covariances singular, unlike scipy.linalg.sqrtm
    ev = np.linalg.eigvals(s1 @ s2)
    tr_covmean = float(np.sqrt(np.clip(ev.real, 0, None)).sum())
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--budgets", default="4.5,5,6")
    ap.add_argument("--random", type=int, default=10)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs"))
    ap.add_argument("--table-only", action="store_true", help="print the Markdown table of an existing quality.json")
    args = ap.parse_args()
    if args.table_only:
        with open(os.path.join(args.out, "quality.json")) as f:
            print(table(json.load(f)))
        return
    t_start = time.perf_counter()
    budgets = [float(b) for b in args.budgets.split(",")]
    cache = default_cache_dir()
    prepared = prepare_model(PipelineConfig(model=demo_model()).model_request, cache)
    model_path, sched_path = prepared.onnx_path, prepared.scheduler_config
    info = inspect_model(model_path)
    schedule = NoiseSchedule.from_config(sched_path)
    cs = CalibrationSettings()
    stats = calibrate(info, cs, schedule, cache_dir=cache, input_statistics=True)  # GPTQ reads them
    sampler = DDIMSampler(schedule, cs.steps)
    profiled = set(int(i) for i in stats.step_indices)
    shape = tuple(stats.inputs[info.sample.name].shape[2:])
    n = args.samples
    x_T = initial_noise(EVAL_SEED, n, shape)
    feats, real_feats, clf_acc = digits_features()

    fp = ort_session(model_path)
    traj = {}

    def fp_predict(x, t, i):
        if i in profiled:
            traj[i] = x.copy()
        return fp.run([info.output], build_feeds(info, x, t, {}))[0]

    final_fp = sampler.sample(x_T, fp_predict)
    eps_fp = {i: fp.run([info.output], build_feeds(info, traj[i], int(sampler.timesteps[i]), {}))[0] for i in traj}
    rng = np.random.default_rng(1)
    boots = [rng.integers(0, n, n) for _ in range(20)]

    def metrics(samples):
        f = feats(samples)
        return {"fid": fid(f, real_feats), "fid_std": float(np.std([fid(f[b], real_feats) for b in boots]))}

    fp_metrics = metrics(final_fp)
    # conv outputs in float (--float-conv-outputs): the allocation methods are compared on the
    # quantizer's accuracy, not on onnxruntime's kernel choice (docs/quality.md)
    qs = QuantizeSettings(integer_conv=False)
    amax = choose_ranges(stats.act_hist, ActCalibSettings())

    def evaluate(alloc):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "q.onnx")
            quantize(info, alloc, amax, path, qs, "onnxruntime", stats=stats)
            q = ort_session(path)
            final_q = sampler.sample(x_T, lambda x, t, i: q.run([info.output], build_feeds(info, x, t, {}))[0])
            sq = [sqnr_db(eps_fp[i], q.run([info.output], build_feeds(info, traj[i], int(sampler.timesteps[i]), {}))[0])
                  for i in sorted(traj)]
        peak = float(final_fp.max() - final_fp.min())
        mse = ((final_fp.astype(np.float64) - final_q) ** 2).reshape(n, -1).mean(1)
        psnr = 10 * np.log10(peak ** 2 / np.maximum(mse, 1e-30))
        return {"bits": alloc.achieved_bits, "psnr": float(psnr.mean()), "psnr_se": float(psnr.std() / np.sqrt(n)),
                "sqnr": float(np.mean(sq)), **metrics(final_q)}

    imp_b = compute_importance(stats.grams, stats.timesteps, stats.layer_names, OrmSettings(estimator="biased"),
                               stats.schedule.num_train_timesteps)
    imp_u = compute_importance(stats.grams, stats.timesteps, stats.layer_names, OrmSettings(estimator="unbiased"),
                               stats.schedule.num_train_timesteps)
    t = time.perf_counter()
    sens = measure_sensitivity(info, stats, amax, candidates(info.layers, "onnxruntime")[0], qs, OrmSettings().alpha, cache)
    sens_seconds = time.perf_counter() - t
    rows = []
    for budget in budgets:
        runs = {"orm": allocate(info.layers, budget, "onnxruntime", theta=imp_b.theta),
                "orm-unbiased": allocate(info.layers, budget, "onnxruntime", theta=imp_u.theta),
                "sensitivity": allocate(info.layers, budget, "onnxruntime", sensitivity=sens.scores),
                "uniform": allocate(info.layers, budget, "onnxruntime", AllocationSettings(method="uniform")),
                "smallest-first": allocate(info.layers, budget, "onnxruntime", AllocationSettings(method="smallest-first"))}
        for name, alloc in runs.items():
            r = evaluate(alloc)
            rows.append({"budget": budget, "method": name, **r})
            print(f"budget {budget:g} {name:15s} bits {r['bits']:.3f} PSNR {r['psnr']:.2f} SQNR {r['sqnr']:.2f} "
                  f"FID {r['fid']:.2f}", flush=True)
        rand = [evaluate(allocate(info.layers, budget, "onnxruntime", AllocationSettings(method="random", seed=s)))
                for s in range(args.random)]
        med = {k: float(np.median([r[k] for r in rand])) for k in ("bits", "psnr", "sqnr", "fid")}
        spread = {k + "_range": [float(min(r[k] for r in rand)), float(max(r[k] for r in rand))] for k in ("psnr", "sqnr", "fid")}
        rows.append({"budget": budget, "method": f"random (median of {args.random})", **med, "psnr_se": None,
                     "fid_std": None, **spread})
        print(f"budget {budget:g} random median PSNR {med['psnr']:.2f} range {spread['psnr_range']}", flush=True)
    w8 = evaluate(allocate(info.layers, 8, "onnxruntime", AllocationSettings(method="uniform")))
    rows.append({"budget": 8.0, "method": "W8A8 (conv_in, conv_out FP16)", **w8})
    result = {"model": model_path, "samples": n, "eval_seed": EVAL_SEED, "calibration": {"K": cs.timesteps, "N": cs.samples,
              "steps": cs.steps}, "classifier_accuracy": clf_acc, "fp32": fp_metrics, "rows": rows,
              "sensitivity_seconds": sens_seconds, "seconds": time.perf_counter() - t_start,
              "orm_beta": imp_b.beta, "orm_spread_biased": float(np.mean([s.mean for s in imp_b.orm_spread])),
              "orm_spread_unbiased": float(np.mean([s.mean for s in imp_u.orm_spread]))}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "quality.json"), "w") as f:
        json.dump(result, f, indent=1)
    plot(result, os.path.join(args.out, "quality.png"))
    print(table(result))
    print(f"done in {result['seconds']:.0f}s -> {args.out}/quality.json, quality.png")


def table(result) -> str:
    """The Markdown quality table of a quality.json result."""
    fp = result["fp32"]
    lines = [f"FP32 reference: digits-feature FID {fp['fid']:.2f} +- {fp['fid_std']:.2f} ({result['samples']} samples).", "",
             "| budget | method | avg bits | sample PSNR vs FP32 (dB) | mean noise SQNR (dB) | digits-feature FID |",
             "|---:|---|---:|---:|---:|---:|"]
    for r in result["rows"]:
        if r.get("psnr_range"):
            psnr = f"{r['psnr']:.2f} [{r['psnr_range'][0]:.2f}, {r['psnr_range'][1]:.2f}]"
            sq = f"{r['sqnr']:.2f} [{r['sqnr_range'][0]:.2f}, {r['sqnr_range'][1]:.2f}]"
            fd = f"{r['fid']:.2f} [{r['fid_range'][0]:.2f}, {r['fid_range'][1]:.2f}]"
        else:
            psnr, sq, fd = f"{r['psnr']:.2f} +- {r['psnr_se']:.2f}", f"{r['sqnr']:.2f}", f"{r['fid']:.2f} +- {r['fid_std']:.2f}"
        lines.append(f"| {r['budget']:g} | {r['method']} | {r['bits']:.3f} | {psnr} | {sq} | {fd} |")
    return "\n".join(lines)


def plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    methods = sorted({r["method"] for r in result["rows"] if r["method"] != "W8A8 (conv_in, conv_out FP16)"})
    for m in methods:
        rs = sorted([r for r in result["rows"] if r["method"] == m], key=lambda r: r["bits"])
        axes[0].plot([r["bits"] for r in rs], [r["psnr"] for r in rs], "o-", label=m)
        axes[1].plot([r["bits"] for r in rs], [r["fid"] for r in rs], "o-", label=m)
    w8 = next(r for r in result["rows"] if r["method"] == "W8A8 (conv_in, conv_out FP16)")
    axes[0].axhline(w8["psnr"], color="k", ls=":", label="W8A8 (conv_in, conv_out FP16)")
    axes[1].axhline(w8["fid"], color="k", ls=":", label="W8A8 (conv_in, conv_out FP16)")
    axes[1].axhline(result["fp32"]["fid"], color="gray", ls="--", label="FP32")
    axes[0].set_ylabel("final-sample PSNR vs FP32 (dB)")
    axes[1].set_ylabel("digits-feature FID (lower is better)")
    for ax in axes:
        ax.set_xlabel("average weight bits")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("bundled digits DDPM: quality vs average weight bits, same calibration and seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
