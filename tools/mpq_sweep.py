#!/usr/bin/env python3
"""Mixed precision against uniform precision at equal bits, per scorer, over a sweep of budgets: one
calibration, one FP32 reference, one metric (docs/quality.md, "Mixed precision on transformers").

For each budget B of --budgets, on one target:
  uniform  every unpinned layer at the plain format of the largest width <= B, the GEMMs' INT4 weights
           then given a low-rank FP16 branch of one common size that lands on B (formats/lowrank.py):
           "uniform at equal bits"
  MPQ      the 0/1 program over each scorer of --scorers (orm, orm-error, probed, sensitivity, trajectory)
and once: W8A8 with the plain formats only (--formats fp16,w8a8: the 8-bit reference) and W8A8 where each
GEMM takes plain or smoothed INT8 by its expected error (--formats fp16,w8a8,w8a8-sq). With --old-menu,
the MPQ rows once more on the formats before the ladder (fp16, w8a8, w4a16, and w4a8 on onnxruntime). With
--peers, ModelOpt 0.47's ONNX INT8 PTQ (entropy) and INT4 weight-only AWQ (awq_clip, its W4A16 path for
TensorRT) on the same FP32 ONNX and calibration inputs, in ModelOpt's own environment (tools/compare_peers.py).

Metric (as tools/compare_peers.py): the full 50-step sampler from the same 64 held-back seeds as the FP32
model, final-sample PSNR vs FP32 (mean +- standard error over seeds), differences paired over seeds; bits
counted from each written file (low-rank factors at 16 bits).

    python tools/mpq_sweep.py --model digits-dit --target tensorrt --budgets 4.25,4.5,5,6,7,8 --json out.json
    python tools/mpq_sweep.py --table-only out.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from compare_peers import (BUNDLED, BUNDLED_CALIB_DATA, EVAL_SEED, calibration_feeds, count_bits,  # noqa: E402
                           modelopt_python, modelopt_quantize)

from mpq_export.core.choices import Scorer  # noqa: E402
from mpq_export.formats import QuantizeSettings  # noqa: E402
from mpq_export.pipeline import PipelineConfig, prepare_model  # noqa: E402
from mpq_export.runtime.sampler import NoiseSchedule, Trajectory  # noqa: E402
from mpq_export.stages.act_ranges import ActCalibSettings, choose_ranges  # noqa: E402
from mpq_export.stages.allocate import (AllocationSettings, allocate, candidates, equal_bit_alternatives,  # noqa: E402
                                        for_time_only_layers)
from mpq_export.stages.calibrate import CalibrationSettings, calibrate, sample_shape  # noqa: E402
from mpq_export.stages.diagnostics import importance_of  # noqa: E402
from mpq_export.stages.format_error import expected_format_error  # noqa: E402
from mpq_export.stages.inspect import inspect_model  # noqa: E402
from mpq_export.stages.orm import OrmSettings  # noqa: E402
from mpq_export.stages.quantize import count_weight_bits, quantize  # noqa: E402
from mpq_export.stages.validate import ValidationSettings, Validator  # noqa: E402
from mpq_export.targets import get_target  # noqa: E402
from mpq_export.util.cache import default_cache_dir  # noqa: E402

OLD_MENU = {"tensorrt": ("fp16", "w8a8", "w4a16"), "onnxruntime": ("fp16", "w8a8", "w4a8", "w4a16")}


def scores_for(scorer: Scorer, info, stats, ranges, cands, qs, imp, cache):
    """(theta, sensitivity dict, measured_by) for allocate, and the seconds the scores took."""
    t = time.perf_counter()
    if scorer is Scorer.ORM:
        return (imp.theta, None, Scorer.SENSITIVITY), time.perf_counter() - t
    if scorer.measured:
        from mpq_export.stages.sensitivity import measure_sensitivity

        s = measure_sensitivity(info, stats, ranges, cands[0], qs, OrmSettings().alpha, cache, scorer=scorer)
    else:
        from mpq_export.stages.scores import error_scores

        s = error_scores(info, stats, ranges, cands[0], qs, scorer, imp.theta, OrmSettings().alpha, cache)
    return (None, s.scores, scorer), time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="digits-dit", help="digits | patches | digits-dit | an .onnx file or folder")
    ap.add_argument("--target", default="tensorrt")
    ap.add_argument("--budgets", default="4.25,4.5,5,6,7")
    ap.add_argument("--scorers", default="orm,orm-error,probed,sensitivity,trajectory")
    ap.add_argument("--old-menu", action="store_true", help="also the MPQ rows on the formats before the ladder")
    ap.add_argument("--old-menu-scorers", default="sensitivity", help="the scorers of the --old-menu rows")
    ap.add_argument("--no-uniform", action="store_true")
    ap.add_argument("--peers", default="", help="ModelOpt methods to score beside ours: entropy, max (INT8), "
                    "awq_clip, awq_lite (INT4 weight-only)")
    ap.add_argument("--peer-venv", default=os.path.join(default_cache_dir(), "peers", "modelopt-0.47.0"))
    ap.add_argument("--seeds", type=int, default=64)
    ap.add_argument("--calib-data", default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--table-only", metavar="JSON")
    args = ap.parse_args()
    if args.table_only:
        with open(args.table_only) as f:
            result = json.load(f)
        print(table(result))
        print(summary(result))
        return
    t_start = time.perf_counter()
    cache = default_cache_dir()
    prepared = prepare_model(PipelineConfig(model=BUNDLED.get(args.model, args.model)).model_request, cache)
    info = inspect_model(prepared.onnx_path)
    schedule = NoiseSchedule.from_config(prepared.scheduler_config)
    cs = CalibrationSettings()
    calib_data = args.calib_data or BUNDLED_CALIB_DATA.get(args.model)
    t = time.perf_counter()
    stats = calibrate(info, cs, schedule, calib_data, cache_dir=cache, input_statistics=True)
    calib_seconds = stats.seconds if not stats.cached else None
    validator = Validator.of(info, Trajectory(schedule, cs.steps, stats.step_indices, sample_shape(info, None),
                                              calib_data), ValidationSettings(samples=args.seeds, seed=EVAL_SEED))
    ranges = choose_ranges(stats.act_hist, ActCalibSettings())
    target = get_target(args.target)
    qs = QuantizeSettings()
    imp = importance_of(stats, OrmSettings())
    rows, timings = [], {"calibration": calib_seconds, "fp32_reference_and_setup": time.perf_counter() - t}

    with tempfile.TemporaryDirectory(prefix="mpq-sweep-") as d:
        def score_file(name: str, path: str, bits: float, counts: dict, **extra) -> None:
            t0 = time.perf_counter()
            v = validator.validate(path)
            ps = np.asarray(v.sample_psnr_per_sample)
            row = {"method": name, "bits": bits, "psnr": float(ps.mean()), "psnr_se": float(ps.std(ddof=1) / np.sqrt(len(ps))),
                   "sqnr": v.mean_sqnr_db, "psnr_per_sample": [round(float(x), 3) for x in ps], "formats": counts,
                   **extra}
            rows.append(row)
            print(f"{name:50s} bits {bits:.3f}  PSNR {row['psnr']:6.2f} +- {row['psnr_se']:.2f}  SQNR {row['sqnr']:6.2f}  "
                  f"{counts}  ({time.perf_counter() - t0:.0f}s)", flush=True)

        def score(name: str, alloc, **extra) -> None:
            path = os.path.join(d, f"m{len(rows)}.onnx")
            quantize(info, alloc, ranges, path, qs, target, stats=stats)
            bits, _ = count_weight_bits(path, info)
            assert abs(bits - alloc.achieved_bits) < 1e-6, (bits, alloc.achieved_bits)
            counts = {}
            for f in alloc.formats:
                key = "w4a16-lr" if f.name.startswith("w4a16-lr") else f.name
                counts[key] = counts.get(key, 0) + 1
            score_file(name, path, bits, counts, **extra)

        peers = [m for m in args.peers.split(",") if m]
        if peers:  # on the same FP32 graph and the same calibration inputs as ours
            py, feeds = modelopt_python(args.peer_venv), calibration_feeds(info, stats)
            # ModelOpt's INT4 blocks are 128 wide by default; on GEMMs narrower than that its scales do not fit
            # the weight (onnxruntime refuses them), so there it takes one block per row, as ours does
            narrowest = min((l.weight_shape[l.reduction_axis] for l in info.layers if l.op_type in ("MatMul", "Gemm")),
                            default=128)
            # and its INT4 path is for MatMul only ("Currently, only MatMul nodes quantization is supported"): on
            # a Gemm it writes scales for one axis and names the other, which onnxruntime refuses, so Gemms stay
            # float there (their bits counted from the file as 16)
            gemms = [l.node_name for l in info.layers if l.op_type == "Gemm"]
            for method in peers:
                path = os.path.join(d, f"modelopt-{method}.onnx")
                awq = method.startswith("awq")
                modelopt_quantize(py, prepared.onnx_path, feeds, path, method, d, exclude=gemms if awq else None,
                                  block_size=64 if awq and narrowest < 128 else None)
                kind = "INT4 weight-only AWQ" if method.startswith("awq") else "INT8 PTQ"
                score_file(f"ModelOpt 0.47 {kind} ({method})", path, count_bits(path, info), {}, kind="peer")

        # the 8-bit references
        plain8 = AllocationSettings(method="uniform", formats=("fp16", "w8a8"))
        score("W8A8", allocate(info.layers, 8, target, plain8), kind="w8a8")
        smooth = AllocationSettings(method="uniform", formats=("fp16", "w8a8", "w8a8-sq"))
        cands = for_time_only_layers(candidates(info.layers, target, smooth), info.layers, set(imp.excluded))
        errs = expected_format_error(info, equal_bit_alternatives(info.layers, cands[0]), stats, ranges, qs)
        score("W8A8, smoothed where the expected error says", allocate(info.layers, 8, target, smooth, format_error=errs,
                                                                  cands=cands), kind="w8a8-sq")
        menus = {"ladder": AllocationSettings()}
        if args.old_menu:
            menus["old"] = AllocationSettings(formats=OLD_MENU[target.name])
        budgets = [float(b) for b in args.budgets.split(",") if b]
        for menu, settings in menus.items():
            cands = for_time_only_layers(candidates(info.layers, target, settings), info.layers, set(imp.excluded))
            errs = expected_format_error(info, equal_bit_alternatives(info.layers, cands[0]), stats, ranges, qs)
            scored = {}
            for name in [s for s in (args.scorers if menu == "ladder" else args.old_menu_scorers).split(",") if s]:
                scorer = Scorer.of(name, "--scorers")
                scored[scorer], secs = scores_for(scorer, info, stats, ranges, cands, qs, imp, cache)
                timings[f"scores {scorer} ({menu})"] = secs
            for b in budgets:
                if not args.no_uniform:
                    u = allocate(info.layers, b, target, AllocationSettings(method="uniform", formats=settings.formats),
                                 format_error=errs, cands=cands)
                    score(f"uniform {b:g} ({menu} menu)", u, kind="uniform", budget=b, menu=menu)
                for scorer, (theta, sens, by) in scored.items():
                    a = allocate(info.layers, b, target, settings, theta=theta, sensitivity=sens, format_error=errs,
                                 cands=cands, measured_by=by)
                    score(f"MPQ {b:g} {scorer} ({menu} menu)", a, kind="mpq", budget=b, scorer=str(scorer), menu=menu)

    result = {"model": os.path.abspath(BUNDLED.get(args.model, args.model)), "target": target.name, "seeds": args.seeds,
              "rows": rows, "timings": timings, "seconds": time.perf_counter() - t_start,
              "command": "python tools/mpq_sweep.py " + " ".join(sys.argv[1:])}
    print(table(result))
    print(summary(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


def paired(rows: dict, a: str, b: str) -> tuple[float, float]:
    diff = np.asarray(rows[a]["psnr_per_sample"]) - np.asarray(rows[b]["psnr_per_sample"])
    return float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(len(diff)))


def table(result: dict) -> str:
    lines = [f"{os.path.basename(os.path.dirname(result['model']))}, {result['target']} target, {result['seeds']} seeds",
             "", "| allocation | bits (file) | final-sample PSNR (dB) | mean noise SQNR (dB) | formats |", "|---|---:|---:|---:|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['method']} | {r['bits']:.3f} | {r['psnr']:.2f} +- {r['psnr_se']:.2f} | {r['sqnr']:.2f} | "
                     + ", ".join(f"{k} {v}" for k, v in sorted(r["formats"].items())) + " |")
    return "\n".join(lines)


def summary(result: dict) -> str:
    """Per budget and scorer: MPQ minus uniform at equal bits and minus W8A8, paired over seeds."""
    rows = {r["method"]: r for r in result["rows"]}
    w8 = next(r["method"] for r in result["rows"] if r.get("kind") == "w8a8")
    lines = ["", "| budget | scorer (menu) | minus uniform (same menu) | minus W8A8 |", "|---:|---|---:|---:|"]
    for r in result["rows"]:
        if r.get("kind") != "mpq":
            continue
        u = f"uniform {r['budget']:g} ({r['menu']} menu)"
        du = "{:+.2f} +- {:.2f}".format(*paired(rows, r["method"], u)) if u in rows else ""
        lines.append(f"| {r['budget']:g} | {r['scorer']} ({r['menu']}) | {du} | "
                     "{:+.2f} +- {:.2f} |".format(*paired(rows, r["method"], w8)))
    sq = next((r["method"] for r in result["rows"] if r.get("kind") == "w8a8-sq"), None)
    if sq:
        lines.append("\nW8A8 smoothed where chosen minus W8A8: {:+.2f} +- {:.2f} dB".format(*paired(rows, sq, w8)))
    for r in result["rows"]:
        if r.get("kind") == "peer":
            lines.append("W8A8 minus {}: {:+.2f} +- {:.2f} dB".format(r["method"], *paired(rows, w8, r["method"])))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
