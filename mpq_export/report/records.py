"""The typed `Report` of one output folder, built from the stage results, and its JSON form.

report.json is `Report.to_json()` and `Report.from_json` reads it back; report.md (markdown.py) and the
plots (plots.py) are rendered from the same typed Report, so the files never disagree; files.py writes
them all.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field

import numpy as np

from mpq_export.stages.act_ranges import ActCalibSettings, ActivationRanges
from mpq_export.stages.allocate import AllocationSummary, BitAllocation
from mpq_export.runtime.engine import EngineStatus
from mpq_export.stages.calibrate import CalibrationSettings, CalibrationStats
from mpq_export.core.model_info import ModelInfo
from mpq_export.stages.orm import LayerImportance, OrmSpread
from mpq_export.runtime.polygraphy_replay import PolygraphyReplay
from mpq_export.runtime.sampler import timestep_value
from mpq_export.formats import LayerStorage
from mpq_export.stages.diagnostics import ActivationCost, StabilityCheck
from mpq_export.handoffs import HandOffRecord
from mpq_export.stages.sensitivity import SensitivityScores
from mpq_export.stages.validate import ValidationResult, ValidationSummary


@dataclass
class LayerRow:
    """One quantizable layer in the report."""
    name: str
    op_type: str
    params: int
    weight_shape: list[int]
    format: str
    weight_bits: int
    act_bits: int | None
    storage: str  # int4 | int8 | float: the weight's dtype in the written file
    importance: float | None  # ORM theta
    sensitivity: dict[str, float] | None  # format -> measured error (--importance sensitivity)
    weight_sqnr_db: float | None
    pin: str | None
    stored_bits: float | None = None  # bits per weight the layer stores (a low-rank branch's factors included)
    detail: str = ""  # what its format chose for it (a low-rank branch's rank, a smoothing's alpha)


@dataclass(frozen=True)
class OrmSummary:
    """ORM's settings and the spread of its off-diagonal values (a collapse toward 1 is flagged)."""
    estimator: str
    agg: str
    alpha: float
    beta: float
    excluded: list[str]  # time-only layers: no per-sample signal, median importance
    spread_per_t: list[OrmSpread]
    spread_mean: float | None
    spread_std: float | None
    collapsed: bool


@dataclass(frozen=True)
class TimestepImportance:
    timesteps: list[int | float]  # the profiled steps, in the scheduler's own units
    weights: list[float] | None  # w_t (None without ORM)
    theta: list[list[float]] | None  # [K][L] per-step importance


@dataclass
class ActivationCostRow(ActivationCost):
    quantized_here: bool  # whether this model's allocation quantizes the tensor


@dataclass(frozen=True)
class ActivationRangeSummary:
    method: str
    settings: ActCalibSettings
    threshold_over_max_mean: float
    amax: dict[str, float]  # tensor -> INT8 threshold
    observed_max: dict[str, float]  # tensor -> largest |x| seen in calibration
    costliest: list[ActivationCostRow] | None  # worst first (None when not measured)


@dataclass(frozen=True)
class CalibrationSummary:
    sampler: str  # DDIM | flow-matching Euler: the trajectory calibration and validation ran along
    steps: int
    profiled_timesteps: int
    samples: int
    unet_rows: int  # rows the UNet saw per profiled step (two per sample under guidance)
    guidance_scale: float
    seed: int
    schedule: str
    conditioning: str
    cached: bool
    seconds: float
    time_split: dict[str, float]  # where calibrate's seconds went (CalibrationStats.time_split)
    rows_per_call: int
    gram_sketch_dim: int | None  # None: exact Grams
    settings: CalibrationSettings
    activation_ranges: ActivationRangeSummary


@dataclass(frozen=True)
class TargetComparisonRow:
    """The same allocation validated as another graph (tensorrt target runs)."""
    graph: str
    mean_sqnr_db: float
    mean_cosine: float
    sample_psnr_db: float

    @classmethod
    def of(cls, graph: str, v: ValidationResult) -> "TargetComparisonRow":
        return cls(graph, v.mean_sqnr_db, v.mean_cosine, v.sample_psnr_db)


@dataclass
class Report:
    """Everything one output folder says about itself; `to_json()` is report.json."""
    model: str  # the FP32 ONNX the run started from
    input: str  # what the user gave (ONNX file or diffusers folder)
    output_model: str
    budget: float
    achieved_bits: float  # the allocation's average stored weight bits
    counted_bits: float  # the same, counted from the written file
    within_budget: bool
    target: str
    importance_method: str
    total_params: int
    format_counts: dict[str, int]
    allocation: AllocationSummary
    layers: list[LayerRow]
    importance: OrmSummary | None  # None without ORM
    importance_per_timestep: TimestepImportance
    calibration: CalibrationSummary
    validation: ValidationSummary
    polygraphy: PolygraphyReplay
    engine: EngineStatus
    notes: list[str]
    check: str | None  # the TensorRT rule checker's verdict (tensorrt target)
    validation_compare: list[TargetComparisonRow] | None  # the same allocation per target (tensorrt target)
    stability: list[StabilityCheck] | None  # ORM settings perturbed -> layers that change format
    timings: dict[str, float]  # stage -> seconds
    peak_rss_mb: dict[str, float]  # stage -> the process's peak resident memory during the stage
    tool: str = "mpq-export"  # how mpq-export recognises its own output folders
    plots: list[str] = field(default_factory=list)
    gpu: str | None = None  # the GPU family whose formats were offered, and why (tensorrt target)
    handoff: list[HandOffRecord] = field(default_factory=list)  # --emit: where each runtime loads the model, and how

    def to_json(self) -> dict:
        d = asdict(self)
        return {"tool": d.pop("tool"), **d}

    @classmethod
    def from_json(cls, d: dict) -> "Report":
        """The typed Report of a report.json (as read by json.load)."""
        return _typed(cls, d)


def _typed(tp, value):
    """`value` (parsed JSON) as type `tp`: dataclasses field by field, lists, tuples, dicts and optionals."""
    import types
    import typing

    if value is None:
        return None
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return _typed(next(a for a in args if a is not type(None)), value)
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        return tp(**{k: _typed(hints[k], v) for k, v in value.items()})
    if origin is list:
        return [_typed(args[0], v) for v in value]
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_typed(args[0], v) for v in value)
        return tuple(_typed(a, v) for a, v in zip(args, value)) if args else tuple(value)
    if origin is dict:
        return {k: _typed(args[1], v) for k, v in value.items()}
    return value


def layer_rows(info: ModelInfo, alloc: BitAllocation, layer_storage: dict[str, LayerStorage],
               imp: LayerImportance | None, sens: SensitivityScores | None) -> list[LayerRow]:
    return [LayerRow(name=l.name, op_type=l.op_type, params=l.params, weight_shape=list(l.weight_shape), format=f.name,
                     weight_bits=f.weight_bits, act_bits=f.act_bits, storage=layer_storage[l.name].weight_dtype,
                     importance=float(imp.theta[i]) if imp is not None else None,
                     sensitivity=sens.scores[l.name] if sens is not None else None,
                     weight_sqnr_db=layer_storage[l.name].weight_sqnr_db, pin=alloc.pins.get(l.name),
                     stored_bits=alloc.layer_bits[i] / l.params, detail=layer_storage[l.name].detail)
            for i, (l, f) in enumerate(zip(info.layers, alloc.formats))]


def orm_summary(imp: LayerImportance | None) -> OrmSummary | None:
    if imp is None:
        return None
    spread_mean = [s.mean for s in imp.orm_spread if s.mean is not None]
    spread_std = [s.std for s in imp.orm_spread if s.std is not None]
    m = float(np.mean(spread_mean)) if spread_mean else None
    sd = float(np.mean(spread_std)) if spread_std else None
    return OrmSummary(estimator=imp.settings.estimator, agg=imp.settings.agg, alpha=imp.settings.alpha, beta=imp.beta,
                      excluded=list(imp.excluded), spread_per_t=list(imp.orm_spread), spread_mean=m, spread_std=sd,
                      collapsed=bool(m is not None and sd is not None and m > 0.95 and sd < 0.02))


def timestep_importance(stats: CalibrationStats, imp: LayerImportance | None) -> TimestepImportance:
    return TimestepImportance(timesteps=[timestep_value(x) for x in stats.timesteps],
                              weights=[float(x) for x in imp.weights] if imp is not None else None,
                              theta=imp.theta_per_t.tolist() if imp is not None else None)


def calibration_summary(stats: CalibrationStats, ranges: ActivationRanges, act_costs: list[ActivationCost] | None,
                        quantized_activations: dict[str, float]) -> CalibrationSummary:
    costliest = ([ActivationCostRow(**asdict(c), quantized_here=c.tensor in quantized_activations) for c in act_costs]
                 if act_costs else None)
    return CalibrationSummary(
        sampler="flow-matching Euler" if stats.schedule.flow_matching else "DDIM", steps=stats.settings.steps, profiled_timesteps=len(stats.timesteps), samples=stats.settings.samples,
        unet_rows=stats.n_samples, guidance_scale=stats.settings.guidance_scale, seed=stats.settings.seed,
        schedule=stats.schedule.source, conditioning=stats.conditioning_source, cached=stats.cached,
        seconds=stats.seconds, time_split=dict(stats.time_split), rows_per_call=stats.rows_per_call,
        gram_sketch_dim=stats.gram_sketch_dim,
        settings=stats.settings,
        activation_ranges=ActivationRangeSummary(
            method=ranges.settings.method, settings=ranges.settings, threshold_over_max_mean=ranges.clipped_fraction(),
            amax=ranges.amax, observed_max=ranges.observed_max, costliest=costliest))
