"""report stage: a typed `Report` built from the stage results, written as report.json (for
programs), report.md (for people) and plots (PNG).

report.json is `Report.to_json()` and `Report.from_json` reads it back; report.md and the plots are
rendered from the typed Report, so the two files never disagree. matplotlib is imported lazily, with the Agg backend (no display on build machines).
"""

from __future__ import annotations

from collections import Counter

import json
import os
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
                     weight_sqnr_db=layer_storage[l.name].weight_sqnr_db, pin=alloc.pins.get(l.name))
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


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str, left: float = 0.7, right: float = 0.25, bottom: float = 0.5, top: float = 0.35) -> None:
    """Margins fixed in inches rather than fig.tight_layout: the layout pass measures every tick label,
    and the plots would take a quarter of a small model's run."""
    w, h = fig.get_size_inches()
    fig.subplots_adjust(left=left / w, right=1 - right / w, bottom=bottom / h, top=1 - top / h)
    fig.savefig(path, dpi=110)
    _plt().close(fig)


def plot_bits(report: Report, path: str) -> None:
    plt = _plt()
    layers = report.layers
    fig, ax = plt.subplots(figsize=(max(8, len(layers) * 0.12), 4))
    colors = {"w4a8": "#d62728", "w4a16": "#ff7f0e", "w8a8": "#1f77b4", "fp8": "#9467bd", "fp16": "#2ca02c"}
    x = np.arange(len(layers))
    ax.bar(x, [l.weight_bits for l in layers], color=[colors.get(l.format, "gray") for l in layers], width=0.9)
    ax2 = ax.twinx()
    ax2.plot(x, [l.importance for l in layers], "k.", ms=3, label="importance")
    ax2.set_yscale("log")
    ax.set_xlabel("layer (graph order)")
    ax.set_ylabel("weight bits")
    ax2.set_ylabel("importance (log)")
    ax.set_title(f"{report.allocation.method} allocation at {report.achieved_bits:.3f} bits (budget {report.budget:g})")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors.values()]
    ax.legend(handles, list(colors), loc="upper left", fontsize=7)
    _save(fig, path, right=1.0)


def plot_validation(report: Report, path: str) -> None:
    plt = _plt()
    v = report.validation.per_timestep
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r.t for r in v], [r.sqnr_db for r in v], "o-")
    ax.set_xlabel("timestep t")
    ax.set_ylabel("noise-prediction SQNR (dB)")
    ax.set_title("quantized vs FP32, per profiled timestep")
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_importance(importance_per_t: TimestepImportance, path: str) -> None:
    plt = _plt()
    ts = importance_per_t.timesteps
    theta = np.asarray(importance_per_t.theta)  # [K, L]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    im = ax.imshow(np.log10(np.maximum(theta, 1e-300)), aspect="auto", cmap="viridis")
    ax.set_yticks(range(len(ts)))
    ax.set_yticklabels([str(t) for t in ts], fontsize=6)
    ax.set_ylabel("timestep t")
    ax.set_xlabel("layer (graph order)")
    ax.set_title("log10 theta_i(t): per-timestep ORM importance")
    fig.colorbar(im, ax=ax)
    _save(fig, path, right=0.1)


def sample_grid(fp32: np.ndarray, quant: np.ndarray, path: str, title: str = "") -> None:
    """Row 1 FP32, row 2 quantized, same seeds column by column: one mosaic image, 1-pixel white gaps."""
    plt = _plt()
    n = min(len(fp32), 16)

    def img(a):  # [C, H, W] in [-1, 1] -> [H, W, 3] in [0, 1]
        a = np.clip((np.asarray(a[:3], np.float32) + 1) / 2, 0, 1)
        return np.repeat(a, 3, axis=0).transpose(1, 2, 0) if a.shape[0] == 1 else a.transpose(1, 2, 0)

    h, w = img(fp32[0]).shape[:2]
    mosaic = np.ones((2 * h + 1, n * (w + 1) - 1, 3), np.float32)
    for r, src in enumerate((fp32, quant)):
        for j in range(n):
            mosaic[r * (h + 1): r * (h + 1) + h, j * (w + 1): j * (w + 1) + w] = img(src[j])
    fig, ax = plt.subplots(figsize=(max(n, 6) * 1.0, 2.3))
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_yticks([h / 2, h + 1 + h / 2], ["FP32", "quantized"], fontsize=7)
    ax.tick_params(length=0)
    ax.set_xticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        ax.set_title(title, fontsize=8)
    _save(fig, path, left=0.85, right=0.1, bottom=0.1, top=0.3 if title else 0.1)


def _fmt(v, nd=2):
    return "—" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))


def render_markdown(r: Report) -> str:
    """report.md from the Report, section by section."""
    lines = _md_summary(r)
    if r.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in r.notes]
    lines += _md_validation(r) + _md_checks_and_engine(r) + _md_handoff(r) + _md_equal_bits(r) + _md_activation_costs(r)
    lines += _md_stability_and_timings(r) + _md_layers(r)
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in r.plots]
    return "\n".join(lines) + "\n"


def _md_summary(r: Report) -> list[str]:
    imp, cal = r.importance, r.calibration
    given = r.input or r.model
    lines = [
        f"# mpq-export report: {_display_name(given)}", "",
        *([f"- input: `{given}`"] if given != r.model else []),
        f"- model: `{r.model}` ({r.total_params:,} quantizable weight parameters in {len(r.layers)} layers)",
        f"- target: **{r.target}**; output: `{r.output_model}`",
        *([f"- formats of GPU family: {r.gpu}"] if r.gpu else []),
        f"- budget: **{r.budget:g}** average weight bits; achieved (allocation): **{r.achieved_bits:.4f}**; "
        f"counted from the file (= stored by the {r.target} target): {r.counted_bits:.4f}",
        f"- allocation: {r.allocation.method} (scorer: {r.allocation.scorer}), "
        f"solver: {r.allocation.solver_status or 'n/a'}",
        "- formats: " + ", ".join(f"{k}: {c}" for k, c in sorted(r.format_counts.items())),
        f"- calibration: {cal.steps}-step {cal.sampler} ({cal.schedule}), K={cal.profiled_timesteps} profiled steps, "
        f"N={cal.samples} samples, conditioning: {cal.conditioning}" + (" (cached)" if cal.cached else ""),
        f"- activation ranges: {cal.activation_ranges.method} (thresholds at "
        f"{cal.activation_ranges.threshold_over_max_mean:.2f} of the observed max on average)",
    ]
    if imp:
        lines.append(f"- ORM: estimator {imp.estimator}, aggregation {imp.agg}, alpha {imp.alpha:g}, "
                     f"beta {imp.beta:.4g}; off-diagonal ORM spread (mean over t): mean "
                     f"{_fmt(imp.spread_mean, 3)}, std {_fmt(imp.spread_std, 3)}"
                     + (" — **ORM has collapsed toward 1: try --orm-estimator unbiased**" if imp.collapsed else ""))
        if imp.excluded:
            lines.append(f"- {len(imp.excluded)} time-only layer(s) have no per-sample signal (ORM undefined) and "
                         f"take the median importance: " + ", ".join(f"`{n}`" for n in imp.excluded[:8])
                         + (" ..." if len(imp.excluded) > 8 else ""))
    return lines


def _md_validation(r: Report) -> list[str]:
    v = r.validation
    lines = ["", "## Validation (onnxruntime, held-back seeds)", "",
             f"Mean per-timestep noise-prediction SQNR **{v.mean_sqnr_db:.2f} dB**, cosine {v.mean_cosine:.5f}; "
             f"final-sample PSNR vs FP32 from the same seeds **{v.sample_psnr_db:.2f} dB** "
             f"(min {min(v.sample_psnr_per_sample):.2f}, max {max(v.sample_psnr_per_sample):.2f}).", "",
             "| t | SQNR (dB) | cosine | max abs err |", "|---:|---:|---:|---:|"]
    lines += [f"| {p.t} | {p.sqnr_db:.2f} | {p.cosine:.5f} | {p.max_abs_err:.4g} |" for p in v.per_timestep]
    if r.validation_compare:
        lines += ["", "### Same allocation, per target (onnxruntime CPU)", "",
                  "| graph | mean SQNR (dB) | mean cosine | sample PSNR (dB) |", "|---|---:|---:|---:|"]
        lines += [f"| {c.graph} | {c.mean_sqnr_db:.2f} | {c.mean_cosine:.5f} | {c.sample_psnr_db:.2f} |"
                  for c in r.validation_compare]
    return lines


def _md_checks_and_engine(r: Report) -> list[str]:
    lines = []
    if r.check:
        lines += ["", f"TensorRT rule check: {r.check}"]
    if r.polygraphy:
        pg = r.polygraphy
        lines += ["", "## Polygraphy", "", f"Replay the comparison on the held-back validation steps with t >= {pg.min_t or 0} "
                  f"(per step: SNR >= {pg.snr_threshold_db:g} dB, cosine >= {pg.cosine_threshold:g}; the steps nearest "
                  "t = 0, where the noise prediction is fragile but barely reaches the sample, are covered by the table above):", ""]
        for name, cmd in pg.commands.items():
            lines += [f"{name}:", "", "```", cmd, "```", ""]
    if r.engine:
        e = r.engine
        lines += ["", "## TensorRT engine", "", f"- status: {e.status}"]
        if e.path:
            lines.append(f"- engine: `{e.path}` ({e.seconds or 0:.1f} s to build)")
        if e.layer_precisions:
            lines.append("- per-layer precision (engine inspector): " + ", ".join(f"{k}: {c}" for k, c in e.layer_precisions.items()))
    return lines


def _md_handoff(r: Report) -> list[str]:
    lines = []
    for h in r.handoff:
        lines += ["", f"## Hand-off: {h.kind}", "", f"- model: `{h.model}`", f"- checked here: {h.checked}",
                  "", "Run by the runtime itself (not run by mpq-export):", "", "```bash", h.command, "```"]
    return lines


def _md_equal_bits(r: Report) -> list[str]:
    """Which format won where two of equal bits (w8a8 and fp8) were offered, and by how much."""
    choices = r.allocation.equal_bit_choices
    if not choices:
        return []
    chosen = {l.name: l.format for l in r.layers}
    measured = r.allocation.scorer != "orm" and r.allocation.scorer != "none"
    how = (f"the measured error ({_measured_column(r.allocation.scorer)}) inside the 0/1 program" if measured else
           "the expected error of each format (relative output error of the quantized weight under the layer's "
           "input statistics + relative error of the quantized input, from the calibration histograms): the "
           "smaller is offered to the 0/1 program")
    names = sorted({f for e in choices.values() for f in e})
    won = Counter(chosen[n] for n in choices)
    lines = ["", "## Formats of equal bits", "",
             f"{len(choices)} layers could store 8 bits two ways ({', '.join(names)}); chosen by {how}. "
             f"Chosen: " + ", ".join(f"{k} {v}" for k, v in sorted(won.items())) + ".", "",
             "| layer | chosen | " + " | ".join(f"error {n}" for n in names) + " |",
             "|---|---|" + "---:|" * len(names)]
    # the layers that took the less common choice first, then where the two formats differ most
    def order(kv):
        v = sorted(kv[1].values())
        return (won[chosen[kv[0]]], -v[-1] / max(v[0], 1e-30))
    for n, e in sorted(choices.items(), key=order)[:20]:
        lines.append(f"| `{n}` | {chosen[n]} | " + " | ".join(f"{e[f]:.3g}" if f in e else "—" for f in names) + " |")
    if len(choices) > 20:
        lines.append(f"| ... {len(choices) - 20} more in allocation.json | | " + " | " * (len(names) - 1) + " |")
    return lines


def _md_activation_costs(r: Report) -> list[str]:
    lines = []
    costs = r.calibration.activation_ranges.costliest
    if costs:
        lines += ["", "## Activation quantizers that cost the most", "",
                  "Each layer-input activation quantized alone to INT8 at its calibrated threshold (weights float); "
                  "noise-prediction SQNR at the profiled calibration steps (higher is better), the worst first:", "",
                  "| activation | read by | quantized in this model | SQNR alone (dB) | threshold | observed max |",
                  "|---|---|---|---:|---:|---:|"]
        lines += [f"| `{c.tensor}` | {', '.join(f'`{n}`' for n in c.layers[:3])}{' ...' if len(c.layers) > 3 else ''} | "
                  f"{'yes' if c.quantized_here else 'no'} | {c.sqnr_db:.2f} | {c.threshold:.4g} | "
                  f"{c.observed_max:.4g} |" for c in costs[:10]]
    return lines


def _md_stability_and_timings(r: Report) -> list[str]:
    lines = []
    if r.stability:
        lines += ["", "## Allocation stability", "", "Layers that change format when a setting changes (same budget):", "",
                  "| change | layers changed |", "|---|---:|"]
        lines += [f"| {c.change} | {c.layers_changed} |" for c in r.stability]
    rss = r.peak_rss_mb or {}
    lines += ["", "## Timings", "", "| stage | seconds | peak RSS during the stage (MB) |", "|---|---:|---:|"]
    lines += [f"| {k} | {t:.2f} | {_fmt(rss.get(k), 0)} |" for k, t in r.timings.items()]
    split = r.calibration.time_split or {}
    if split and not r.calibration.cached:
        lines += ["", "Calibration's time: " + ", ".join(f"{k.replace('_', ' ')} {t:.1f} s" for k, t in split.items())]
    return lines


def _md_layers(r: Report) -> list[str]:
    sens = any(l.sensitivity for l in r.layers)
    lines = ["", "## Layers", "", "| # | layer | op | params | format | bits | ORM importance |"
             + (f" {_measured_column(r.allocation.scorer)} at 4 / 8 bits |" if sens else "") + " weight SQNR (dB) |",
             "|---:|---|---|---:|---|---:|---:|" + ("---:|" if sens else "") + "---:|"]
    for i, l in enumerate(r.layers):
        s = l.sensitivity or {}
        s4 = next((v for k, v in s.items() if k.startswith("w4")), None)
        g = lambda v: "—" if v is None else f"{v:.3g}"  # noqa: E731
        sens_cell = f" {g(s4)} / {g(s.get('w8a8'))} |" if sens else ""
        lines.append(f"| {i} | `{l.name}` | {l.op_type} | {l.params:,} | {l.format} | {l.weight_bits} | "
                     f"{l.importance:.4g} |{sens_cell} {_fmt(l.weight_sqnr_db, 1)} |")
    return lines


def write_report(rep: Report, out_dir: str) -> None:
    """report.json, report.md and the plots of one output folder."""
    plots = []
    plot_bits(rep, os.path.join(out_dir, "bits.png"))
    plots.append("bits.png")
    if rep.validation.per_timestep:
        plot_validation(rep, os.path.join(out_dir, "validation.png"))
        plots.append("validation.png")
    if rep.importance is not None and len(rep.importance_per_timestep.timesteps) > 1:
        plot_importance(rep.importance_per_timestep, os.path.join(out_dir, "importance.png"))
        plots.append("importance.png")
    if os.path.exists(os.path.join(out_dir, "samples.png")):
        plots.append("samples.png")
    rep.plots = plots
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(rep.to_json(), f, indent=2)
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write(render_markdown(rep))


@dataclass(frozen=True)
class SweepRow:
    """One budget of a --budget list, in summary.json."""
    budget: float
    achieved_bits: float
    folder: str
    mean_sqnr_db: float
    sample_psnr_db: float
    method: str
    scorer: str

    @classmethod
    def of(cls, r: Report) -> "SweepRow":
        return cls(r.budget, r.achieved_bits, os.path.basename(os.path.dirname(r.output_model)),
                   r.validation.mean_sqnr_db, r.validation.sample_psnr_db, r.allocation.method, r.allocation.scorer)


def write_pareto(out_root: str, reports: list[Report]) -> None:
    """For --budget lists: summary.json / summary.md and pareto.png (quality vs average bits)."""
    plt = _plt()
    rows = sorted((SweepRow.of(r) for r in reports), key=lambda x: x.achieved_bits)
    fig, ax = plt.subplots(figsize=(6, 3.8))
    bits = [r.achieved_bits for r in rows]
    ax.plot(bits, [r.mean_sqnr_db for r in rows], "o-", label="mean noise SQNR (dB)")
    ax.plot(bits, [r.sample_psnr_db for r in rows], "s-", label="final-sample PSNR vs FP32 (dB)")
    ax.set_xlabel("average weight bits")
    ax.set_ylabel("dB")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("quality vs size, one calibration")
    fig.tight_layout()
    fig.savefig(os.path.join(out_root, "pareto.png"), dpi=110)
    plt.close(fig)
    with open(os.path.join(out_root, "summary.json"), "w") as f:
        json.dump([asdict(r) for r in rows], f, indent=2)
    md = ["# mpq-export budget sweep", "", "| budget | achieved bits | mean SQNR (dB) | sample PSNR (dB) | folder |",
          "|---:|---:|---:|---:|---|"]
    md += [f"| {r.budget:g} | {r.achieved_bits:.4f} | {r.mean_sqnr_db:.2f} | {r.sample_psnr_db:.2f} | "
           f"[{r.folder}]({r.folder}/report.md) |" for r in rows]
    md += ["", "![pareto](pareto.png)", ""]
    with open(os.path.join(out_root, "summary.md"), "w") as f:
        f.write("\n".join(md))


def _measured_column(scorer: str) -> str:
    """The layer table's heading for the measured scores: what the scorer measured (sensitivity.py)."""
    return "final-sample error" if scorer == "trajectory" else "noise-prediction error"


def _display_name(path: str) -> str:
    """The title's name for what the user gave: a UNet folder called unet/ is named with its parent."""
    name = os.path.basename(os.path.normpath(path))
    return f"{os.path.basename(os.path.dirname(os.path.normpath(path)))}/{name}" if name == "unet" else name
