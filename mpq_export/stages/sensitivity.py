"""The second scorer (`--importance sensitivity`): measured output error of each layer alone.

For every layer i and candidate format f, the model is quantized at layer i only (format f) and
run on the calibration cache's stored inputs x_t at the profiled steps; s[i, f] is the relative
squared error of the noise prediction, sum_t w_t ||eps_q - eps||^2 / ||eps||^2, with the same
timestep weights w_t = exp(-alpha t / T) as ORM. The 0/1 program then minimises sum s[i, f]
under the budget (the usual additive approximation). Nothing is re-sampled: the stored x_t are
the FP32 trajectory's. Results are cached beside the calibration statistics.

With objective "trajectory" (`--importance trajectory`), s[i, f] is instead what the layer alone does
to the final sample: the whole sampler trajectory (the calibration's steps and guidance) from
TRAJECTORY_SAMPLES fixed seeds of its own, ||x0_q - x0||^2 / ||x0||^2 against the FP32 trajectory from
the same seeds. About 10x the forwards of the per-step objective, for allocations that were mostly
better (docs/quality.md): errors made early in the trajectory weigh most in the final sample, which the
per-step error does not see.

All (layer, format) probes share one onnxruntime session: every layer weight is made an
overridable initializer (listed as a graph input, so a feed replaces it), and every layer input
gets an exact fake-quant branch x + m * (DQ(Q(x)) - x) whose switch m is 0 unless fed 1. A probe
is then a feed, not a graph rebuild and a session per layer.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass

import numpy as np

from mpq_export.core.choices import Scorer
from mpq_export.core.model_info import ModelInfo
from mpq_export.formats import FORMATS_VERSION, Format, QuantizeSettings
from mpq_export.formats.gptq import ROUNDING_VERSION
from mpq_export.formats.inputs import INT8_INPUT, InputQuantizer
from mpq_export.runtime.ort import RuntimeSettings, ort_session, run_model
from mpq_export.runtime.sampler import timestep_value
from mpq_export.stages.act_ranges import ActivationRanges
from mpq_export.stages.calibrate import CalibrationStats
from mpq_export.stages.orm import timestep_weights
from mpq_export.util.cache import write_json_entry
from mpq_export.util.errors import MPQError
from mpq_export.util.progress import Progress, log

DEFAULT_SAMPLES = 8  # of the N calibration samples: enough to rank layers at a fraction of the cost
TRAJECTORY_SAMPLES = 16  # trajectories per probe (objective "trajectory")
TRAJECTORY_SEED_OFFSET = 777  # their seeds: calibration seed + 777 + j, neither calibration's nor validation's


@dataclass
class SensitivityScores:
    scores: dict[str, dict[str, float]]  # layer -> format name -> weighted relative error
    samples: int
    seconds: float
    cached: bool = False
    # SENSITIVITY: noise-prediction error at the profiled steps; TRAJECTORY: final-sample error
    scorer: Scorer = Scorer.SENSITIVITY


def measure_sensitivity(info: ModelInfo, stats: CalibrationStats, ranges: ActivationRanges,
                        cands: list[list[Format]], qsettings: QuantizeSettings, alpha: float,
                        cache_dir: str | None = None, runtime: RuntimeSettings = RuntimeSettings(),
                        samples: int = DEFAULT_SAMPLES, scorer: Scorer | str = Scorer.SENSITIVITY,
                        steps: int | None = None) -> SensitivityScores:
    """s[layer][format] for every candidate format of every layer (`cands`: allocate.candidates on the
    run's target). The probes quantize weights as `qsettings` does, in an FP32 graph; each input
    quantizer reads its threshold from `ranges`. `steps`: probe only that many of the profiled steps,
    evenly spaced (None: all); `samples`: rows of each (the per-step objective)."""
    scorer = Scorer.of(scorer, "--importance")
    if not scorer.measured:
        raise MPQError(f"internal: measure_sensitivity measures {Scorer.SENSITIVITY} or {Scorer.TRAJECTORY}, not {scorer}")
    if scorer is Scorer.TRAJECTORY:
        samples = TRAJECTORY_SAMPLES
    quantizers = input_quantizers(cands)
    # what decides the weights' integers; the graph-only settings (integer_conv) change nothing probed
    q = {k: v for k, v in asdict(qsettings).items() if k != "integer_conv"}
    # as in calibration's own cache key: memory per call and where the scheduler config lies are not
    # what the probes measure
    calib, schedule = asdict(stats.settings), asdict(stats.schedule)
    calib.pop("mem_budget_mb"), schedule.pop("source")
    if not calib.get("attention_inputs"):  # entries made before the field existed stay valid
        calib.pop("attention_inputs", None)
    # through JSON so that the copy stored in the entry compares equal on reading (tuples become lists)
    identity = {"calib": stats.model_sha256, "calibration": stats.identity, "settings": calib,
                "alpha": alpha, "schedule": schedule, "conditioning": stats.conditioning_source,
                "samples": samples, "q": q, "rounding_version": ROUNDING_VERSION, "formats_version": FORMATS_VERSION,
                **({"steps": steps} if steps is not None else {}),
                "objective": "trajectory" if scorer is Scorer.TRAJECTORY else "step", "act_amax": ranges.amax,
                "cands": {l.name: [f.name for f in c] for l, c in zip(info.layers, cands)}}
    for quantizer in quantizers[1:]:  # the other input quantizers' thresholds (entries without them keep theirs)
        identity[f"{quantizer.name}_amax"] = {x: quantizer.threshold(ranges, x) for x in ranges.amax}
    identity = json.loads(json.dumps(identity, sort_keys=True))
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]
    cache_path = os.path.join(cache_dir, f"sens-{key}.json") if cache_dir else None
    cached = _load_cached(cache_path, identity)
    if cached is not None:
        log.info("[sensitivity] reusing cached scores %s", cache_path)
        return SensitivityScores(scores=cached, samples=samples, seconds=0.0, cached=True, scorer=scorer)

    t0 = time.perf_counter()
    n = min(samples, stats.n_samples)
    ks = probed_steps(len(stats.timesteps), steps)
    K = len(ks)
    w = timestep_weights(stats.timesteps[ks], alpha, stats.schedule.num_train_timesteps)
    xs = stats.inputs[info.sample.name][ks, :n]
    cond = {c.name: stats.inputs[c.name][:n] for c in info.conditioning}
    refs = stats.outputs[ks, :n].astype(np.float64)
    ref_energy = np.array([max(float((refs[k] ** 2).sum()), 1e-30) for k in range(K)])
    sess, weights, masks = probe_session(info, ranges, runtime, quantizers=quantizers)
    if scorer is Scorer.TRAJECTORY:
        error_of = _final_sample_error(info, stats, sess)
    else:
        def error_of(extra: dict) -> float:
            return sum(w[k] * float(((run_model(sess, info, [info.output], xs[k], timestep_value(stats.timesteps[ks[k]]), cond,
                                                extra)[0] - refs[k]) ** 2).sum()) / ref_energy[k] for k in range(K))
    names = [l.name for l in info.layers]
    scores: dict[str, dict[str, float]] = {l.name: {} for l in info.layers}
    jobs = [(i, f) for i, c in enumerate(cands) for f in c]
    with Progress("sensitivity", len(jobs)) as p:
        for done, (i, fmt) in enumerate(jobs, 1):
            layer = info.layers[i]
            if not fmt.quantized:
                scores[names[i]][fmt.name] = 0.0
                p.update(done)
                continue
            weight = weights[layer.weight_name]
            q = fmt.quantize_weight(layer, weight, qsettings, stats.for_layer(layer, ranges))
            extra = {layer.weight_name: q.dequantize().astype(np.float32),
                     **fmt.probe_feeds(layer, weight, q, masks[i])}
            scores[names[i]][fmt.name] = error_of(extra)
            p.update(done, names[i])
    if cache_path:
        write_json_entry(cache_path, {"identity": identity, "scores": scores}, "sensitivity cache")
    return SensitivityScores(scores=scores, samples=n, seconds=time.perf_counter() - t0, scorer=scorer)


def probed_steps(k: int, steps: int | None) -> np.ndarray:
    """Indices of `steps` of the k profiled steps, evenly spaced from the first to the last (all with None)."""
    if steps is None or steps >= k:
        return np.arange(k)
    return np.unique(np.round(np.linspace(0, k - 1, max(1, steps))).astype(int))


def input_quantizers(cands: list[list[Format]]) -> list[InputQuantizer]:
    """The input quantizers the candidates use, INT8 first (always: the activation costs probe it)."""
    from mpq_export.formats.inputs import INPUT_QUANTIZERS

    used = {f.probe_quantizer.name for c in cands for f in c if f.probe_quantizer is not None}
    return [INT8_INPUT] + [q for q in INPUT_QUANTIZERS if q is not INT8_INPUT and q.name in used]


def _final_sample_error(info: ModelInfo, stats: CalibrationStats, sess):
    """error_of(feeds): ||x0_q - x0||^2 / ||x0||^2 of the whole trajectory with the probe's feeds, against the
    FP32 trajectory from the same TRAJECTORY_SAMPLES seeds (the calibration's sampler, conditioning rows and
    guidance)."""
    from mpq_export.stages.calibrate import sample_shape
    from mpq_export.runtime.sampler import guided, initial_noise, sampler_for

    st = stats.settings
    per_sample = 2 if st.guidance != 1 else 1  # UNet rows: (unconditional, conditional) adjacent
    n = min(TRAJECTORY_SAMPLES, stats.n_samples // per_sample)  # n_samples counts rows
    rows = n * per_sample
    cond = {c.name: stats.inputs[c.name][:rows] for c in info.conditioning}
    shape = sample_shape(info, st.resolution)
    sampler = sampler_for(stats.schedule, st.steps, shape)
    x_T = initial_noise(st.seed + TRAJECTORY_SEED_OFFSET, n, shape)

    def final_sample(extra: dict) -> np.ndarray:
        def model_rows(x, t, i):
            return run_model(sess, info, [info.output], x, t, cond, extra)[0]
        return sampler.sample(x_T, guided(model_rows, st.guidance)).astype(np.float64)

    ref = final_sample({})
    energy = max(float((ref ** 2).sum()), 1e-30)
    return lambda extra: float(((final_sample(extra) - ref) ** 2).sum()) / energy


def _load_cached(path: str | None, identity: dict) -> dict[str, dict[str, float]] | None:
    """The cached scores when the entry is whole and was made from exactly `identity` (every layer and
    candidate format scored with a finite number); else None, with a warning when an entry was there."""
    if not path or not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            entry = json.load(f)
        scores = entry["scores"]
        ok = entry["identity"] == identity and all(
            isinstance(scores[layer][fmt], (int, float)) and math.isfinite(scores[layer][fmt])
            for layer, fmts in identity["cands"].items() for fmt in fmts)
    except (OSError, ValueError, TypeError, KeyError) as e:
        log.warning("[sensitivity] ignoring unreadable cache %s (%s); measuring again", path, e)
        return None
    if not ok:
        log.warning("[sensitivity] ignoring cache %s: made from another model or settings; measuring again", path)
        return None
    return scores


def probe_mask(i: int, quantizer: InputQuantizer) -> str:
    """The switch of layer i's fake-quant input branch of `quantizer`'s kind in a probe session."""
    return f"sens_mask_{i}" if quantizer is INT8_INPUT else f"sens_{quantizer.name.replace('-', '_')}_mask_{i}"


def probe_session(info: ModelInfo, ranges: ActivationRanges, runtime: RuntimeSettings = RuntimeSettings(),
                  with_weights: bool = True, quantizers: list[InputQuantizer] = (INT8_INPUT,)):
    """(session, FP32 weights by name, per layer {quantizer name: its mask input}) of the probe model.

    Every layer input gets, for each of `quantizers`, an exact fake-quant branch x + m (DQ(Q(x)) - x) at
    that quantizer's scale, switched by its mask input (probe_mask), 0 unless fed 1. A quantizer with a
    per-channel probe (a smoothed input) gets its scale as an input too (`<mask>:scale` in the dict), fed
    per probe, on MatMul/Gemm layers only.

    Weights stored outside the .onnx stay there: the probe graph is serialised without them and
    onnxruntime reads them from the model's folder (a Stable-Diffusion-size proto cannot be
    serialised: protobuf stops at 2 GB). `with_weights` makes each layer's weight a feedable input
    and returns its values (the sensitivity scorer swaps quantized weights in); the activation-cost
    probe needs neither."""
    import os

    from onnx import TensorProto, helper, numpy_helper

    from mpq_export.util.onnx_io import load_for_edit, load_onnx

    folder = os.path.dirname(os.path.abspath(info.path))
    if all(q.min_opset <= 13 for q in quantizers):
        model = load_onnx(info.path, load_weights=not info.has_external_data)
    else:  # e.g. FP8 QuantizeLinear needs opset >= 19: the graph converted as for writing Q/DQ
        model = load_for_edit(info.path, load_weights=not info.has_external_data)
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    weights = {}
    for l in info.layers if with_weights else ():
        if l.weight_name not in inits:
            raise MPQError(f"--importance sensitivity needs initializer weights; layer {l.name} takes a Constant node "
                           f"(fold constants first, e.g. with onnxslim or polygraphy surgeon sanitize --fold-constants)")
        weights[l.weight_name] = numpy_helper.to_array(inits[l.weight_name], base_dir=folder).astype(np.float32)
    graph_inputs = {i.name for i in g.input}
    for name in weights:
        if name not in graph_inputs:  # an initializer listed as an input can be overridden by a feed
            t = inits[name]
            g.input.append(helper.make_tensor_value_info(name, t.data_type, list(t.dims)))
    nodes = {n.name: n for n in g.node}
    masks = []
    new_nodes = []
    for i, l in enumerate(info.layers):
        x = l.activation_input
        branch, masks_i = None, {}
        for quantizer in quantizers:
            tag = "" if quantizer is INT8_INPUT else f"{quantizer.name.replace('-', '_')}_"
            s, zp, m = f"sens_{tag}scale_{i}", f"sens_{tag}zp_{i}", probe_mask(i, quantizer)
            attrs = {}
            if quantizer.per_channel_probe:
                if l.op_type not in ("MatMul", "Gemm"):
                    continue
                k = l.weight_shape[l.reduction_axis]  # the input's last axis
                # an initializer listed as an input: a default the probes that need it override by a feed
                g.input.append(helper.make_tensor_value_info(s, TensorProto.FLOAT, [k]))
                g.initializer.extend([numpy_helper.from_array(np.ones(k, np.float32), s),
                                      numpy_helper.from_array(np.zeros(k, np.int8), zp)])
                masks_i[f"{quantizer.name}:scale"] = s
                attrs = {"axis": -1}
            else:
                threshold = quantizer.threshold(ranges, x) if x in ranges.amax else 1.0
                g.initializer.extend([numpy_helper.from_array(np.array(quantizer.scale(threshold), np.float32), s),
                                      quantizer.probe_zero_point(zp)])
            g.initializer.append(numpy_helper.from_array(np.array(0.0, np.float32), m))
            g.input.append(helper.make_tensor_value_info(m, TensorProto.FLOAT, []))
            q, dq, d, md = (f"sens_{tag}{k}_{i}" for k in ("q", "dq", "diff", "mdiff"))
            new_nodes += [helper.make_node("QuantizeLinear", [x, s, zp], [q], **attrs),
                          helper.make_node("DequantizeLinear", [q, s, zp], [dq], **attrs),
                          helper.make_node("Sub", [dq, x], [d]), helper.make_node("Mul", [m, d], [md])]
            if branch is not None:  # x + m (DQ(Q(x)) - x) + m' (DQ'(Q'(x)) - x) + ...
                both = f"sens_{tag}both_{i}"
                new_nodes.append(helper.make_node("Add", [branch, md], [both]))
                md = both
            branch, masks_i[quantizer.name] = md, m
        out = f"sens_x_{i}"
        new_nodes.append(helper.make_node("Add", [x, branch], [out]))
        nodes[l.node_name].input[0] = out
        masks.append(masks_i)
    # the switches must run before their layers: put them first, then restore topological order
    from mpq_export.util.onnx_io import toposort_nodes

    ordered = toposort_nodes(list(g.node) + new_nodes, {i.name for i in g.input} | set(inits) |
                             {t.name for t in g.initializer})
    if ordered is None:
        raise MPQError("internal: cycle while ordering the sensitivity probe graph")
    del g.node[:]
    g.node.extend(ordered)

    ext_dir = folder if info.has_external_data else None
    return ort_session(model.SerializeToString(), runtime.threads, ext_dir, device=runtime.device), weights, masks
