"""diagnostics stage: what the report shows beside the result, none of which changes the output model.

- activation costs: each activation quantizer alone, worst first (where activation error comes from);
- allocation stability: how many layers move when K, alpha or beta change;
- the target's float graph alone, and the same allocation on the comparison target (targets/base.py,
  `compare_with`), which separate the float graph's error from the Q/DQ's.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, replace

import numpy as np

from mpq_export.formats.inputs import INT8_INPUT
from mpq_export.runtime.ort import RuntimeSettings, run_model
from mpq_export.runtime.sampler import timestep_value
from mpq_export.stages.allocate import AllocationSettings, BitAllocation, allocate
from mpq_export.stages.calibrate import CalibrationStats
from mpq_export.core.model_info import ModelInfo
from mpq_export.stages.orm import LayerImportance, OrmSettings, compute_importance
from mpq_export.formats import QuantizeSettings
from mpq_export.stages.act_ranges import ActivationRanges
from mpq_export.stages.quantize import quantize
from mpq_export.stages.sensitivity import probe_session
from mpq_export.stages.validate import ValidationResult, Validator
from mpq_export.targets import Target, get_target
from mpq_export.util.output_folder import SCRATCH_PREFIX
from mpq_export.util.progress import Progress, log


@dataclass(frozen=True)
class StabilityCheck:
    """One perturbation of the ORM settings and how many layers then take another format."""
    change: str  # e.g. "beta halved (1.23)"
    layers_changed: int


@dataclass(frozen=True)
class TargetComparison:
    label: str
    validation: ValidationResult | None


def importance_of(stats: CalibrationStats, settings: OrmSettings) -> LayerImportance:
    return compute_importance(stats.grams, stats.timesteps, stats.layer_names, settings,
                              stats.schedule.num_train_timesteps)


@dataclass
class ActivationCost:
    tensor: str
    layers: list[str]  # the layers reading it
    sqnr_db: float  # noise-prediction SQNR with only this activation quantized (mean over profiled steps)
    threshold: float
    observed_max: float


def activation_costs(info: ModelInfo, stats: CalibrationStats, ranges: ActivationRanges, samples: int = 4,
                     time_limit_s: float | None = None, runtime: RuntimeSettings = RuntimeSettings()) -> tuple[list[ActivationCost] | None, float]:
    """Each layer-input activation quantizer alone (INT8 at its calibrated threshold, weights float):
    the noise-prediction SQNR at the profiled steps, worst first. Shows where activation error comes from.

    Returns (costs, seconds). With `time_limit_s`, the first tensor's probes are timed and when all of
    them would take longer, nothing more is measured: (None, projected seconds)."""
    n = min(samples, stats.n_samples)
    K = len(stats.timesteps)
    xs = stats.inputs[info.sample.name][:, :n]
    cond = {c.name: stats.inputs[c.name][:n] for c in info.conditioning}
    refs = stats.outputs[:, :n].astype(np.float64)
    sess, _, masks = probe_session(info, ranges, runtime, with_weights=False)
    by_tensor: dict[str, list[int]] = {}
    for i, l in enumerate(info.layers):
        if l.activation_input in ranges.amax:
            by_tensor.setdefault(l.activation_input, []).append(i)
    out = []
    t0 = time.perf_counter()
    with Progress("activation costs", len(by_tensor)) as p:
        for done, (tensor, idx) in enumerate(by_tensor.items(), 1):
            if done == 2 and time_limit_s is not None:
                projected = (time.perf_counter() - t0) * len(by_tensor)
                if projected > time_limit_s:
                    return None, projected
            on = {masks[i][INT8_INPUT.name]: np.array(1.0, dtype=np.float32) for i in idx}
            sq = []
            for k in range(K):
                (eps,) = run_model(sess, info, [info.output], xs[k], timestep_value(stats.timesteps[k]), cond, on)
                err = float(((eps - refs[k]) ** 2).sum())
                sq.append(10 * np.log10(max(float((refs[k] ** 2).sum()), 1e-30) / max(err, 1e-30)))
            out.append(ActivationCost(tensor=tensor, layers=[info.layers[i].name for i in idx], sqnr_db=float(np.mean(sq)),
                                      threshold=float(ranges.amax[tensor]),
                                      observed_max=float(ranges.observed_max.get(tensor, 0.0))))
            p.update(done)
    return sorted(out, key=lambda c: c.sqnr_db), time.perf_counter() - t0


def allocation_stability(info: ModelInfo, stats: CalibrationStats, orm: OrmSettings, imp: LayerImportance,
                         target: str | Target, alloc_settings: AllocationSettings, cands,
                         base: BitAllocation, format_error: dict | None = None) -> list[StabilityCheck]:
    """How many layers change format when K is halved or alpha / beta are halved or doubled (five more
    ORM + HiGHS solves at the same budget; `cands`: allocate.candidates of the run)."""
    def changed(imp2):
        a2 = allocate(info.layers, base.budget, target, alloc_settings, theta=imp2.theta, format_error=format_error,
                      cands=cands)
        return sum(f1.name != f2.name for f1, f2 in zip(base.formats, a2.formats))

    out = {}
    K = stats.grams.shape[0]
    if K >= 2:
        keep = np.arange(0, K, 2)
        out[f"profiled timesteps halved ({K} -> {len(keep)})"] = changed(compute_importance(
            stats.grams[keep], stats.timesteps[keep], stats.layer_names, replace(orm, beta=imp.beta),
            stats.schedule.num_train_timesteps))
    for label, kw in ((f"beta halved ({imp.beta:.3g})", {"beta": imp.beta / 2}),
                      (f"beta doubled ({imp.beta:.3g})", {"beta": imp.beta * 2}),
                      (f"alpha halved ({orm.alpha:g})", {"alpha": orm.alpha / 2, "beta": imp.beta}),
                      (f"alpha doubled ({orm.alpha:g})", {"alpha": orm.alpha * 2 if orm.alpha else 1.0, "beta": imp.beta})):
        out[label] = changed(importance_of(stats, replace(orm, **kw)))
    return [StabilityCheck(label, n) for label, n in out.items()]


def float_graph_validation(target: Target, validator: Validator) -> ValidationResult | None:
    """The target's own float graph (e.g. tensorrt's FP16 graph) with no Q/DQ against FP32: what the target
    costs before quantizing. None when the target runs the FP32 graph itself."""
    from mpq_export.util.onnx_io import load_for_edit, save_model

    graph = target.float_graph(load_for_edit(validator.info.path))
    if graph is None:
        return None
    log.info("[float graph] validating the %s target's graph without quantization", target.name)
    with tempfile.TemporaryDirectory(prefix=f"{SCRATCH_PREFIX}fp16-{os.getpid()}-") as d:
        path = os.path.join(d, "model.fp16.onnx")
        save_model(graph, path)
        del graph  # the file holds it now: GBs at Stable-Diffusion size, not to be kept beside the session
        return validator.validate(path, "validate: FP16 graph alone")


def compare_targets(target: Target, validator: Validator, alloc: BitAllocation, ranges: ActivationRanges,
                    qsettings: QuantizeSettings, stats: CalibrationStats, own: ValidationResult,
                    float_graph: ValidationResult | None, weight_memo: dict | None = None) -> list[TargetComparison]:
    """The same allocation realised for `target.compare_with` (the FP32 graph) beside the target's own
    figures (`own`) and its float graph alone: which part of the error is the float graph's, which the
    Q/DQ's. An allocation with formats the other target does not store (fp8) has no such row."""
    info = validator.info
    other = get_target(target.compare_with)
    foreign = sorted({f.name for l, f in zip(info.layers, alloc.formats) if not other.stores(l.op_type, f)})
    if foreign:
        return [TargetComparison(f"{target.name} target (FP16 graph + Q/DQ)", own),
                TargetComparison(f"FP32 graph + the same Q/DQ: not written ({other.name} stores no "
                                 f"{', '.join(foreign)})", None),
                TargetComparison("FP16 graph alone (no quantization)", float_graph)]
    with tempfile.TemporaryDirectory(prefix=f"{SCRATCH_PREFIX}ort-{os.getpid()}-") as d:
        path = os.path.join(d, "model.ort.onnx")
        # conv outputs left float, as on TensorRT: the difference is then the float graph's alone
        log.info("[compare targets] the same allocation as an %s-target graph", other.name)
        quantize(info, alloc, ranges, path, replace(qsettings, integer_conv=False), other,
                 stats=stats, weight_memo=weight_memo)
        other_val = validator.validate(path, f"validate: {other.name} graph")
    return [TargetComparison(f"{target.name} target (FP16 graph + Q/DQ)", own),
            TargetComparison(f"FP32 graph + the same Q/DQ ({other.name}, conv outputs float)", other_val),
            TargetComparison("FP16 graph alone (no quantization)", float_graph)]
