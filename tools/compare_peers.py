#!/usr/bin/env python3
"""Our quantizers against the tools users would pick instead, on one model, in one run, one metric.

Every model below is scored the same way: the full sampler (50 steps of the model's own sampler:
DDIM, or flow matching's Euler for a flow model) from the same held-back seeds as the FP32 model, final-sample PSNR vs FP32 (mean +-
standard error over the seeds), mean per-step noise SQNR on the FP32 trajectory's x_t, and weight
bits counted from each file (INT8 8, INT4 4, float 16 as the budget counts it). Every quantizer
gets the same calibration inputs: the x_t, t (and conditioning) our calibration saw at its K
profiled steps, N samples each.

Rows:
  ours W8A8, onnxruntime target, one row per --act-calib method (max, percentile, entropy, mse with
       both aggregations over timesteps), round-to-nearest weights: the activation ablation
  ours W8A8 with the defaults, per weight rounding (nearest, GPTQ); default pins (conv_in FP16)
  ours W8, activations float (the default W8A8 file with its activation Q/DQ removed): what
       activation quantization costs
  ours W8A8, tensorrt target (FP16 graph), defaults
  ours MPQ at each --budgets value, onnxruntime target, per scorer (ORM, measured sensitivity per
       step and over the whole trajectory) and weight rounding (nearest, GPTQ)
  onnxruntime quantize_static (QDQ, symmetric INT8 activations and per-channel INT8 weights, on
       Conv/MatMul/Gemm), MinMax and Percentile (99.999) calibration, in this environment
  ModelOpt ONNX PTQ INT8 (`modelopt.onnx.quantization.quantize`, entropy and max calibration, FP16
       graph, calibrated on the CPU), in its own virtual environment: nvidia-modelopt pins other
       onnx/onnxruntime versions, so it never enters the project's environment. Created on first use
       under --peer-venv (about 6 GB with its torch); --no-modelopt skips it.

  ours uniform 4 bits (every unpinned layer at its 4-bit format), per target, with --uniform4
  with --fp8, on the tensorrt target with the Hopper table: all-INT8 (--formats fp16,w8a8), all-FP8
       (--formats fp16,fp8), and the per-layer choice between the two at the same bits (--formats
       fp16,w8a8,fp8), chosen by the expected error (format_error.py) and, with --scorers ...sensitivity,
       by the measured sensitivity

    python tools/compare_peers.py [--model digits|patches|digits-dit|MODEL] [--seeds 64] [--budgets 4.5] [--json OUT]

MODEL may be an FP32 .onnx file or a diffusers folder; digits, patches (UNet DDPMs) and digits-dit
(a class-conditional SD3-style transformer trained by flow matching, with its class conditioning
as --calib-data) are the bundled trained models (tools/train_reference.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mpq_export.stages.act_ranges import ActCalibSettings, choose_ranges  # noqa: E402
from mpq_export.stages.allocate import AllocationSettings, allocate, candidates  # noqa: E402
from mpq_export.stages.calibrate import CalibrationSettings, calibrate, sample_shape  # noqa: E402
from mpq_export.inputs.demo import ASSET_DIR  # noqa: E402
from mpq_export.stages.inspect import inspect_model  # noqa: E402
from mpq_export.stages.orm import OrmSettings, compute_importance  # noqa: E402
from mpq_export.pipeline import PipelineConfig, prepare_model  # noqa: E402
from mpq_export.util.cache import default_cache_dir
from mpq_export.formats import QuantizeSettings  # noqa: E402
from mpq_export.stages.quantize import quantize  # noqa: E402
from mpq_export.formats.gptq import DEFAULT_ROUNDING  # noqa: E402
from mpq_export.runtime.sampler import NoiseSchedule, Trajectory, timestep_value  # noqa: E402
from mpq_export.stages.validate import ValidationSettings, Validator  # noqa: E402

EVAL_SEED = 50_000  # disjoint from calibration (0..N-1) and the pipeline's validation (10,000..)
MODELOPT_REQUIREMENT = "nvidia-modelopt[onnx]==0.47.0"
BUNDLED = {"digits": os.path.join(ASSET_DIR, "unet"),
           "patches": os.path.join(os.path.dirname(ASSET_DIR), "patches_ddpm", "unet"),
           "digits-dit": os.path.join(os.path.dirname(ASSET_DIR), "digits_dit", "transformer")}
BUNDLED_CALIB_DATA = {"digits-dit": os.path.join(os.path.dirname(ASSET_DIR), "digits_dit", "calib_data.npz")}

MODELOPT_SCRIPT = r"""
import sys
import numpy as np
from modelopt.onnx.quantization import quantize
src, data, out, method = sys.argv[1:5]
exclude = sys.argv[5].split(",") if len(sys.argv) > 5 and sys.argv[5] else None
block = int(sys.argv[6]) if len(sys.argv) > 6 and sys.argv[6] else None
z = np.load(data)
# INT8 PTQ (entropy, max) or INT4 weight-only AWQ (awq_clip, awq_lite: ModelOpt's W4A16 path for TensorRT,
# blocks of 128 by default, MatMul only)
mode = "int4" if method.startswith("awq") else "int8"
quantize(src, quantize_mode=mode, calibration_data={k: z[k] for k in z.files}, calibration_method=method,
         calibration_eps=["cpu"], output_path=out, high_precision_dtype="fp16", log_level="WARNING",
         nodes_to_exclude=exclude, block_size=block)
"""


def count_bits(path: str, info) -> float:
    """Average weight bits of the FP32 model's layers in any Q/DQ file (ours or a peer's).

    Each layer is found by its output tensor (peers rename nodes, not tensors); its weight is
    followed back through Cast/Transpose/Reshape/DequantizeLinear to the stored initializer. A weight
    left in float counts 16, as our budget counts it (ours and ModelOpt's are FP16 where TensorRT runs them).
    """
    import onnx

    m = onnx.load(path, load_external_data=False)
    inits = {i.name: i for i in m.graph.initializer}
    producers = {o: n for n in m.graph.node for o in n.output}
    by_name = {n.name: n for n in m.graph.node}
    width = {onnx.TensorProto.INT8: 8, onnx.TensorProto.UINT8: 8, onnx.TensorProto.INT4: 4, onnx.TensorProto.UINT4: 4,
             onnx.TensorProto.FLOAT8E4M3FN: 8}
    total = bits = 0.0
    for layer in info.layers:
        node = producers.get(layer.output)
        if node is None or node.op_type not in ("Conv", "ConvTranspose", "MatMul", "Gemm"):
            node = by_name.get(layer.node_name)
        b = 16
        if node is not None:
            src = node.input[1]
            while src in producers and producers[src].op_type in ("Cast", "Transpose", "Reshape", "DequantizeLinear"):
                p = producers[src]
                if p.op_type == "DequantizeLinear":
                    stored = p.input[0]
                    while stored in producers and producers[stored].op_type == "Cast":  # INT4 widened at load
                        stored = producers[stored].input[0]
                    if stored in inits:  # stored quantized
                        b = width.get(inits[stored].data_type, 16)
                        break
                    q = producers.get(p.input[0])
                    if q is not None and q.op_type == "QuantizeLinear":
                        # a float weight through Q/DQ (ModelOpt's form): TensorRT folds it and stores the
                        # Q's integer type (the zero point's; UINT8 when absent)
                        zp = inits.get(q.input[2]) if len(q.input) > 2 else None
                        b = width.get(zp.data_type, 16) if zp is not None else 8
                        break
                src = p.input[0]
        bits += b * layer.params
        total += layer.params
    return bits / total


def strip_activation_qdq(src: str, dst: str) -> None:
    """The same model with every activation Q/DQ pair made an identity (weights stay quantized)."""
    import onnx

    m = onnx.load(src)
    consts = {i.name for i in m.graph.initializer} | {o for n in m.graph.node if n.op_type == "Constant" for o in n.output}
    consumers = {}
    for n in m.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    changed = set()
    for q in m.graph.node:
        if q.op_type != "QuantizeLinear" or q.input[0] in consts:
            continue
        dqs = consumers.get(q.output[0], [])
        if not dqs or any(dq.op_type != "DequantizeLinear" for dq in dqs):
            continue
        for n in (q, *dqs):
            x = n.input[0]
            n.op_type = "Identity"
            del n.input[:]
            n.input.append(x)
            del n.attribute[:]
            changed.add(n.output[0])
    keep_vi = [vi for vi in m.graph.value_info if vi.name not in changed]
    del m.graph.value_info[:]
    m.graph.value_info.extend(keep_vi)
    onnx.save(m, dst)


def calibration_feeds(info, stats) -> list[dict[str, np.ndarray]]:
    """One feed dict per profiled step: exactly what our calibration saw (x_t at t, N samples)."""
    from mpq_export.runtime.ort import build_feeds

    cond = {c.name: stats.inputs[c.name] for c in info.conditioning}
    xs = stats.inputs[info.sample.name]
    return [build_feeds(info, xs[k], timestep_value(t), cond) for k, t in enumerate(stats.timesteps)]


def feeds_reader(feeds: list[dict]):
    """onnxruntime.quantization's CalibrationDataReader over a list of feed dicts."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    return Reader()


def ort_quantize_static(model_path: str, feeds: list[dict], out: str, method: str,
                        exclude: list[str] | None = None) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    # only the weighted layers, as ours and ModelOpt's: by default quantize_static also quantizes every
    # Add/Mul/Concat/Reshape, including the sinusoidal timestep embedding and the output, which leaves a
    # diffusion UNet at ~8 dB (measured on the digits model)
    quantize_static(model_path, out, feeds_reader(feeds), quant_format=QuantFormat.QDQ, per_channel=True,
                    op_types_to_quantize=["Conv", "ConvTranspose", "MatMul", "Gemm"], nodes_to_exclude=exclude,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method={"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}[method],
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})


def modelopt_python(venv: str) -> str:
    py = os.path.join(venv, "bin", "python")
    # an interrupted first install leaves a venv without ModelOpt: test the import, not the folder
    if os.path.exists(py) and subprocess.run([py, "-c", "import modelopt.onnx.quantization"],
                                             capture_output=True).returncode == 0:
        return py
    print(f"[peers] creating the ModelOpt environment {venv} ({MODELOPT_REQUIREMENT}; several GB, minutes)", flush=True)
    if not os.path.exists(py):
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    subprocess.run([py, "-m", "pip", "install", "-q", MODELOPT_REQUIREMENT], check=True)
    return py


def modelopt_quantize(py: str, model_path: str, feeds: list[dict], out: str, method: str, workdir: str,
                      exclude: list[str] | None = None, block_size: int | None = None) -> None:
    data = os.path.join(workdir, "modelopt_calib.npz")
    np.savez(data, **{k: np.concatenate([f[k] if f[k].ndim else f[k][None] for f in feeds]) for k in feeds[0]})
    script = os.path.join(workdir, "modelopt_quantize.py")
    with open(script, "w") as f:
        f.write(MODELOPT_SCRIPT)
    import re

    regexes = ",".join(f"^{re.escape(n)}$" for n in exclude or [])
    p = subprocess.run([py, script, model_path, data, out, method, regexes, str(block_size or "")], capture_output=True,
                       text=True)
    if p.returncode != 0 or not os.path.exists(out):
        raise RuntimeError(f"ModelOpt failed:\n{p.stderr[-3000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="digits", help="digits | patches | an .onnx file or diffusers UNet folder")
    ap.add_argument("--seeds", type=int, default=64)
    ap.add_argument("--budgets", default="4.5", help="MPQ rows (onnxruntime target); empty for none")
    ap.add_argument("--peer-venv", default=os.path.join(default_cache_dir(), "peers", "modelopt-0.47.0"))
    ap.add_argument("--no-modelopt", action="store_true")
    ap.add_argument("--no-ort", action="store_true")
    ap.add_argument("--act-methods", default="max,percentile,entropy,mse-relative,mse",
                    help="activation calibrations of the ablation rows (round-to-nearest weights); mse-relative: "
                         "mse averaged over steps as error / energy")
    ap.add_argument("--trt-budgets", default="7.5", help="MPQ rows on the tensorrt target")
    ap.add_argument("--scorers", default="orm,sensitivity,trajectory", help="importance scorers of the MPQ rows")
    ap.add_argument("--roundings", default="nearest,gptq", help="weight roundings of our default W8A8 rows")
    ap.add_argument("--mpq-roundings", default=DEFAULT_ROUNDING, help="weight roundings of the MPQ rows")
    ap.add_argument("--json", default=None, help="write the rows here")
    ap.add_argument("--calib-data", default=None, help="conditioning (.npz, as mpq-export's --calib-data); "
                                                        "default: the bundled model's own")
    ap.add_argument("--uniform4", action="store_true", help="add uniform 4-bit rows on both targets")
    ap.add_argument("--fp8", action="store_true", help="add the all-INT8 / all-FP8 / per-layer INT8-or-FP8 rows "
                    "(tensorrt target, --gpu hopper)")
    ap.add_argument("--table-only", metavar="JSON", help="print the tables of an earlier run's JSON and stop")
    args = ap.parse_args()
    if args.table_only:
        with open(args.table_only) as f:
            result = json.load(f)
        print(table(result))
        print()
        print(summary(result))
        return
    t_start = time.perf_counter()

    cache = default_cache_dir()
    prepared = prepare_model(PipelineConfig(model=BUNDLED.get(args.model, args.model)).model_request, cache)
    model_path, sched_path = prepared.onnx_path, prepared.scheduler_config
    info = inspect_model(model_path)
    schedule = NoiseSchedule.from_config(sched_path)
    cs = CalibrationSettings()
    calib_data = args.calib_data or BUNDLED_CALIB_DATA.get(args.model)
    stats = calibrate(info, cs, schedule, calib_data, cache_dir=cache, input_statistics=True)  # GPTQ rows need them
    shape = sample_shape(info, None)
    vs = ValidationSettings(samples=args.seeds, seed=EVAL_SEED)
    validator = Validator.of(info, Trajectory(schedule, cs.steps, stats.step_indices, shape, calib_data), vs)
    rows = []

    def score(name: str, path: str, **extra) -> None:
        t = time.perf_counter()
        v = validator.validate(path)
        ps = np.asarray(v.sample_psnr_per_sample)
        row = {"method": name, "bits": count_bits(path, info), "psnr": float(ps.mean()),
               "psnr_se": float(ps.std(ddof=1) / np.sqrt(len(ps))), "sqnr": v.mean_sqnr_db,
               "sqnr_per_t": [round(r.sqnr_db, 2) for r in v.per_timestep],
               "psnr_per_sample": [round(float(x), 3) for x in ps], **extra}
        rows.append(row)
        print(f"{name:55s} bits {row['bits']:.3f}  PSNR {row['psnr']:6.2f} +- {row['psnr_se']:.2f}  "
              f"SQNR {row['sqnr']:6.2f}  ({time.perf_counter() - t:.0f}s)", flush=True)

    w8 = AllocationSettings(method="uniform")
    alloc8 = allocate(info.layers, 8, "onnxruntime", w8)
    with tempfile.TemporaryDirectory(prefix="mpq-peers-") as d:
        # ablation of the activation calibration, round-to-nearest weights
        for m in [s for s in args.act_methods.split(",") if s]:
            act = ActCalibSettings(method="mse", over_steps="relative") if m == "mse-relative" else ActCalibSettings(method=m)
            ranges = choose_ranges(stats.act_hist, act)
            path = os.path.join(d, f"w8a8-{m}.onnx")
            quantize(info, alloc8, ranges, path, QuantizeSettings(rounding="nearest"), "onnxruntime")
            score(f"ours W8A8 onnxruntime, act {m}, nearest rounding", path, act_calib=m, rounding="nearest")
        default_ranges = choose_ranges(stats.act_hist, ActCalibSettings())
        roundings = [r for r in args.roundings.split(",") if r]
        for r in roundings:  # the defaults (act mse), per weight rounding
            path = os.path.join(d, f"w8a8-default-{r}.onnx")
            quantize(info, alloc8, default_ranges, path, QuantizeSettings(rounding=r), "onnxruntime", stats=stats)
            score(f"ours W8A8 onnxruntime, defaults (act {default_ranges.settings.method}), {r} rounding", path,
                  rounding=r, default=r == DEFAULT_ROUNDING)
            if r == DEFAULT_ROUNDING:
                fc = os.path.join(d, "w8a8-float-conv.onnx")
                quantize(info, alloc8, default_ranges, fc, QuantizeSettings(rounding=r, integer_conv=False), "onnxruntime", stats=stats)
                score("ours W8A8 onnxruntime, defaults, --float-conv-outputs", fc, rounding=r, float_conv_outputs=True)
                strip_activation_qdq(path, os.path.join(d, "w8-only.onnx"))
                score("ours W8, activations float (the row above with its act Q/DQ removed)",
                      os.path.join(d, "w8-only.onnx"))
        trt = os.path.join(d, "w8a8-trt.onnx")
        quantize(info, allocate(info.layers, 8, "tensorrt", w8), default_ranges, trt, QuantizeSettings(), "tensorrt", stats=stats)
        score("ours W8A8 tensorrt (FP16 graph), defaults", trt, default=True)
        imp = compute_importance(stats.grams, stats.timesteps, stats.layer_names, OrmSettings(),
                                 schedule.num_train_timesteps)
        budgets = [float(x) for x in args.budgets.split(",") if x]
        scorers = [x for x in args.scorers.split(",") if x]
        for r in [x for x in args.mpq_roundings.split(",") if x] if budgets else []:
            qs = QuantizeSettings(rounding=r)
            measured = {}  # scorer -> SensitivityScores (sensitivity.py's two objectives)
            for scorer in ("sensitivity", "trajectory"):
                if scorer in scorers:
                    from mpq_export.stages.sensitivity import measure_sensitivity

                    measured[scorer] = measure_sensitivity(
                        info, stats, default_ranges, candidates(info.layers, "onnxruntime")[0], qs,
                        OrmSettings().alpha, cache, scorer=scorer).scores
            for b in budgets:
                for scorer in scorers:
                    alloc = allocate(info.layers, b, "onnxruntime", theta=imp.theta if scorer == "orm" else None, sensitivity=measured.get(scorer))
                    path = os.path.join(d, f"mpq-{b:g}-{r}-{scorer}.onnx")
                    quantize(info, alloc, default_ranges, path, qs, "onnxruntime", stats=stats)
                    score(f"ours MPQ {b:g} bits onnxruntime ({scorer}), {r} rounding", path, budget=b, rounding=r,
                          scorer=scorer)
            for b in [float(x) for x in args.trt_budgets.split(",") if x]:  # the tensorrt target's own range
                for scorer in scorers:
                    alloc = allocate(info.layers, b, "tensorrt", theta=imp.theta if scorer == "orm" else None, sensitivity=measured.get(scorer))
                    path = os.path.join(d, f"mpq-trt-{b:g}-{r}-{scorer}.onnx")
                    quantize(info, alloc, default_ranges, path, qs, "tensorrt",
                             stats=stats)
                    score(f"ours MPQ {b:g} bits tensorrt ({scorer}), {r} rounding", path, budget=b, rounding=r,
                          scorer=scorer, target="tensorrt")

        if args.uniform4:  # the MPQ rows' baseline at (about) their bits: every unpinned layer at 4 bits
            from mpq_export.stages.allocate import reachable_range

            for target in ("tensorrt", "onnxruntime"):
                floor, _ = reachable_range(info.layers, candidates(info.layers, target)[0])
                alloc = allocate(info.layers, floor, target, AllocationSettings(method="uniform"))
                path = os.path.join(d, f"uniform4-{target}.onnx")
                quantize(info, alloc, default_ranges, path, QuantizeSettings(), target, stats=stats)
                score(f"ours uniform 4 bits {target} (every unpinned layer at 4 bits)", path, target=target,
                      uniform4=True)
        if args.fp8:
            fp8_rows(info, stats, default_ranges, d, score, [x for x in args.scorers.split(",") if x], cache)
        feeds = calibration_feeds(info, stats)
        # the layers our default pins keep float: the peers' rows "with our pins" exclude the same nodes,
        # so the comparison separates calibration and rounding from the choice of float layers
        import re

        from mpq_export.stages.allocate import DEFAULT_KEEP_FP16

        pinned = [l.node_name for l in info.layers if any(re.search(rx, l.name) for rx in DEFAULT_KEEP_FP16)]
        if not args.no_ort:
            # not Entropy: through quantize_static it gets 128 histogram bins for 128 quantized bins, so its
            # threshold search has one candidate and it equals MinMax (onnxruntime 1.2x/1.3x, measured here)
            for method in ("minmax", "percentile"):
                path = os.path.join(d, f"ort-{method}.onnx")
                ort_quantize_static(model_path, feeds, path, method)
                score(f"onnxruntime quantize_static QDQ S8S8 per-channel (Conv/MatMul/Gemm), {method}", path)
            path = os.path.join(d, "ort-percentile-pins.onnx")
            ort_quantize_static(model_path, feeds, path, "percentile", pinned)
            score("onnxruntime quantize_static, percentile, with our pins (conv_in, conv_out float)", path)
        if not args.no_modelopt:
            py = modelopt_python(args.peer_venv)
            for method in ("entropy", "max"):
                path = os.path.join(d, f"modelopt-{method}.onnx")
                modelopt_quantize(py, model_path, feeds, path, method, d)
                score(f"ModelOpt 0.47 ONNX PTQ INT8 (FP16 graph), {method}", path)
            path = os.path.join(d, "modelopt-entropy-pins.onnx")
            modelopt_quantize(py, model_path, feeds, path, "entropy", d, pinned)
            score("ModelOpt 0.47 ONNX PTQ INT8 (FP16 graph), entropy, with our pins (conv_in, conv_out float)", path)

    result = {"model": os.path.abspath(BUNDLED.get(args.model, args.model)), "onnx": model_path, "seeds": args.seeds,
              "eval_seed": EVAL_SEED, "calibration": {"steps": cs.steps, "K": cs.timesteps, "N": cs.samples},
              "rows": rows, "seconds": time.perf_counter() - t_start,
              "command": "python tools/compare_peers.py " + " ".join(sys.argv[1:])}
    print(table(result))
    print(summary(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


def fp8_rows(info, stats, ranges, d: str, score, scorers: list[str], cache: str | None) -> None:
    """All-INT8, all-FP8 and the per-layer choice between them at the same bits (tensorrt target, Hopper)."""
    from mpq_export.stages.allocate import equal_bit_alternatives
    from mpq_export.stages.format_error import expected_format_error
    from mpq_export.targets.tensorrt import TensorRTTarget
    from mpq_export.targets.gpus import family

    hopper, qs = TensorRTTarget(family("hopper"), "--gpu hopper"), QuantizeSettings()
    uniform = {fmt: allocate(info.layers, 8, hopper, AllocationSettings(method="uniform", formats=("fp16", fmt)))
               for fmt in ("w8a8", "fp8")}
    bits = uniform["w8a8"].achieved_bits  # every unpinned layer at 8 bits; pins FP16
    both = AllocationSettings(formats=("fp16", "w8a8", "fp8"))
    cands = candidates(info.layers, hopper, both)[0]
    errors = expected_format_error(info, equal_bit_alternatives(info.layers, cands), stats, ranges, qs)
    allocs = {"all-INT8": uniform["w8a8"], "all-FP8": uniform["fp8"],
              "INT8/FP8 per layer (expected error)": allocate(info.layers, bits, hopper, both,
                                                               theta=np.ones(len(info.layers)), format_error=errors)}
    if "sensitivity" in scorers:
        from mpq_export.stages.sensitivity import measure_sensitivity

        sens = measure_sensitivity(info, stats, ranges, cands, qs, OrmSettings().alpha, cache).scores
        allocs["INT8/FP8 per layer (measured sensitivity)"] = allocate(info.layers, bits, hopper, both, sensitivity=sens)
    for label, alloc in allocs.items():
        path = os.path.join(d, f"fp8-{label.split()[0].replace('/', '-')}-{len(label)}.onnx")
        quantize(info, alloc, ranges, path, qs, hopper, stats=stats)
        n_fp8 = sum(f.name == "fp8" for f in alloc.formats)
        score(f"ours {label}, tensorrt --gpu hopper ({n_fp8} of {len(alloc.formats)} layers FP8)", path,
              target="tensorrt", fp8=label, fp8_layers=[n for n, f in zip(alloc.layer_names, alloc.formats)
                                                        if f.name == "fp8"])


def paired(result: dict, a: str, b: str) -> tuple[float, float]:
    """Mean and standard error of the per-seed PSNR difference a - b (same seeds: far tighter than
    the two rows' own standard errors)."""
    rows = {r["method"]: np.asarray(r["psnr_per_sample"]) for r in result["rows"]}
    d = rows[a] - rows[b]
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))


def summary(result: dict) -> str:
    """Paired differences (same seeds) between the headline rows."""
    rows = result["rows"]
    ours = next((r for r in rows if r.get("default") and "onnxruntime" in r["method"]), None)
    ours_trt = next((r for r in rows if r.get("default") and "tensorrt" in r["method"]), None)
    peers = [r for r in rows if r["method"].startswith(("ModelOpt", "onnxruntime quantize_static"))]
    mpq = [r for r in rows if r.get("budget") is not None and r.get("rounding") == DEFAULT_ROUNDING]
    lines = []
    for a in (ours, ours_trt):
        for p in peers if a else []:
            m, se = paired(result, a["method"], p["method"])
            lines.append(f"- {a['method']} minus {p['method']}: **{m:+.2f} +- {se:.2f} dB**")
    for r in mpq:
        for ref, label in ((ours, "our W8A8 (onnxruntime)"), (ours_trt, "our W8A8 (tensorrt)")):
            if ref:
                m, se = paired(result, r["method"], ref["method"])
                lines.append(f"- {r['method']} minus {label}: **{m:+.2f} +- {se:.2f} dB**")
    by_key = {(r.get("budget"), r.get("target", "onnxruntime"), r.get("scorer")): r for r in mpq}
    for (budget, target, scorer), r in by_key.items():  # the measured scorers against the paper's, and each other
        against = {"sensitivity": ["orm"], "trajectory": ["orm", "sensitivity"]}.get(scorer, [])
        for other in [by_key.get((budget, target, o)) for o in against]:
            if other:
                m, se = paired(result, r["method"], other["method"])
                lines.append(f"- {r['method']} minus {other['method']}: **{m:+.2f} +- {se:.2f} dB**")
    fp8 = {r["fp8"]: r for r in rows if r.get("fp8")}
    for mixed in [k for k in fp8 if "per layer" in k]:
        for pure in ("all-INT8", "all-FP8"):
            if pure in fp8:
                m, se = paired(result, fp8[mixed]["method"], fp8[pure]["method"])
                lines.append(f"- {fp8[mixed]['method']} minus {fp8[pure]['method']}: **{m:+.2f} +- {se:.2f} dB**")
    float_conv = next((r for r in rows if r.get("float_conv_outputs")), None)
    if ours and float_conv:
        m, se = paired(result, ours["method"], float_conv["method"])
        lines.append(f"- {ours['method']} minus {float_conv['method']}: **{m:+.2f} +- {se:.2f} dB**")
    return "\n".join(lines)


def table(result: dict) -> str:
    lines = [f"{os.path.basename(os.path.dirname(result['model'])) or result['model']}: {result['seeds']} seeds, "
             f"{result['calibration']['steps']}-step DDIM", "",
             "| quantizer | weight bits (file) | final-sample PSNR vs FP32 (dB) | mean noise SQNR (dB) |",
             "|---|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['method']} | {r['bits']:.3f} | {r['psnr']:.2f} +- {r['psnr_se']:.2f} | {r['sqnr']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
