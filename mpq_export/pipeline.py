"""The whole job as one library function: run_pipeline(PipelineConfig) -> PipelineResult.

export -> inspect -> calibrate -> orm -> allocate -> quantize -> build -> validate -> report,
for one budget or several (one calibration, one solve per budget), each budget into an output
folder published only when complete (output_folder), each stage timed with its memory peak
(stage_times).
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from mpq_export.config import PipelineConfig
from mpq_export.core.choices import BuildMode, Scorer
from mpq_export.handoffs import HandOffSource
from mpq_export.inputs.prepare import (ModelPreview, PreparedModel, model_schedule, prepare_model, preview_model,
                                      schedule_notes)
from mpq_export.util.onnx_io import SOURCE_CLASS_KEY
from mpq_export.report.records import Report, TargetComparisonRow
from mpq_export.stages.act_ranges import ActivationRanges, choose_ranges
from mpq_export.stages.allocate import (BitAllocation, allocate, candidates, check_budget, equal_bit_alternatives,
                                        for_time_only_layers,
                                        reachable_range, unmatched_patterns)
from mpq_export.stages.calibrate import CalibrationStats, calibrate, sample_shape
from mpq_export.stages.diagnostics import (allocation_stability, activation_costs, compare_targets,
                                           float_graph_validation, importance_of)
from mpq_export.core.model_info import ModelInfo
from mpq_export.stages.inspect import inspect_model
from mpq_export.stages.orm import LayerImportance
from mpq_export.stages.quantize import QuantizedModel, count_weight_bits, quantize
from mpq_export.stages.validate import ValidationResult, Validator
from mpq_export.runtime.sampler import Trajectory
from mpq_export.util.cache import default_cache_dir, remove_stale_temporaries
from mpq_export.util.errors import MPQError
from mpq_export.util.output_folder import FP32_FOLDER, OUTPUT_MODEL, output_folders, remove_stale_scratch, staging_folder
from mpq_export.util.progress import log
from mpq_export.util.stage_times import StageTimes, collector_skips_older_objects

if TYPE_CHECKING:
    from mpq_export.runtime.engine import EngineStatus
    from mpq_export.stages.sensitivity import SensitivityScores

__all__ = ["PipelineConfig", "PipelineResult", "BudgetResult", "run_pipeline", "prepare_model"]


@dataclass
class BudgetResult:
    budget: float
    out_dir: str
    allocation: BitAllocation
    report: Report


@dataclass
class PipelineResult:
    model_path: str  # the FP32 ONNX the run started from
    info: ModelInfo
    stats: CalibrationStats
    importance: LayerImportance | None
    act_ranges: ActivationRanges
    results: list[BudgetResult]
    out_root: str


def run_pipeline(cfg: PipelineConfig) -> PipelineResult:
    """The whole job for `cfg`: one output folder per budget, each published only when complete."""
    with collector_skips_older_objects():
        return _run_pipeline(cfg)


def _run_pipeline(cfg: PipelineConfig) -> PipelineResult:
    timings = StageTimes().start()
    from mpq_export.runtime.ort import providers_for

    providers_for(cfg.runtime.device)  # a missing GPU runtime is a one-line error before any work
    if cfg.build_engine is BuildMode.YES:  # not after calibrating for minutes
        from mpq_export.runtime.engine import tensorrt_status

        ok, why = tensorrt_status()
        if not ok:
            raise MPQError(f"--build-engine yes: {why}")
    remove_stale_scratch()
    cache_dir = default_cache_dir() if cfg.cache_dir is None else (cfg.cache_dir or None)
    if cache_dir and os.path.exists(cache_dir) and not os.path.isdir(cache_dir):
        log.warning("[cache] %s is not a folder; running without the cache", cache_dir)
        cache_dir = None
    if cache_dir:
        remove_stale_temporaries(cache_dir)
    out_root, out_dirs = output_folders(cfg.model, cfg.out_dir, cfg.budgets)  # before any work
    if cache_dir and _inside(cache_dir, out_root):
        raise MPQError(f"the cache {cache_dir} is inside the output folder {out_root}, which each run replaces whole; "
                       f"choose a --cache-dir outside it (or --no-cache)")
    with timings.stage("preflight"):  # what the configuration files decide, before the export and the encoding
        preview = preview_model(cfg.model_request)
        _check_preview(cfg, preview, cache_dir)
    with timings.stage("export"):
        prepared = prepare_model(cfg.model_request, cache_dir)
    try:
        return _run_prepared(cfg, prepared, preview, cache_dir, out_root, out_dirs, timings)
    finally:
        if prepared.temp_dir:  # an export made for this run only (--no-cache)
            shutil.rmtree(prepared.temp_dir, ignore_errors=True)


def _check_preview(cfg: PipelineConfig, preview: ModelPreview, cache_dir: str | None) -> None:
    """Budgets and hand-offs refused from the input's configuration alone (a diffusers folder's layers built on
    the meta device), minutes before an export or a prompt encoding would reach the same refusal."""
    source = HandOffSource(preview.pipeline, preview.optimum_folder, cache_dir)
    for handoff in cfg.emit:
        handoff.check_family(preview.class_name, source)
    if preview.layers:
        cands = candidates(preview.layers, cfg.target, cfg.allocation)[0]
        for b in cfg.budgets:
            check_budget(preview.layers, b, cfg.target, cfg.allocation, cands)


def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


@dataclass
class _SharedResults:
    """The stage results every budget of one run shares (one calibration, one FP32 reference)."""
    cfg: PipelineConfig
    model_path: str
    info: ModelInfo
    stats: CalibrationStats
    ranges: ActivationRanges
    act_costs: list | None  # sensitivity.ActivationCost, worst first
    importance: LayerImportance | None
    sensitivity: SensitivityScores | None
    format_error: dict[str, dict[str, float]] | None  # format_error.py: chooses between formats of equal bits
    cands: tuple  # allocate.candidates: (formats per layer, pins)
    validator: Validator  # the trajectory and the FP32 reference every written graph is compared with
    float_validation: ValidationResult | None  # the target's float graph alone (tensorrt: FP16)
    vae_dir: str | None  # a text-to-image pipeline's VAE: sample grids are decoded by it
    handoff_source: HandOffSource  # what the hand-offs may reuse of the input (pipeline parts, an Optimum folder)
    notes: list[str]


def _run_prepared(cfg: PipelineConfig, prepared: PreparedModel, preview: ModelPreview, cache_dir: str | None, out_root: str,
                  out_dirs: list[str], timings: StageTimes) -> PipelineResult:
    model_path, sched_path = prepared.onnx_path, prepared.scheduler_config

    with timings.stage("inspect"):
        info = inspect_model(model_path, cfg.sample_name, cfg.timestep_name)
    log.info("[inspect] %d quantizable layers, %d weight parameters; inputs: sample=%s timestep=%s%s",
             len(info.layers), info.total_params, info.sample.name, info.timestep.name,
             "".join(f" {c.name}" for c in info.conditioning))
    cands = candidates(info.layers, cfg.target, cfg.allocation)  # (formats per layer, pins): once per run
    if cfg.importance is Scorer.AUTO:  # decided by what the probes would cost against calibration
        from mpq_export.stages.scores import auto_scorer

        c = cfg.calibration
        scorer, why = auto_scorer(cands[0], c.steps, c.timesteps, c.samples)
        log.info("[scores] %s", why)
        cfg = replace(cfg, importance=scorer, decisions=[*cfg.decisions, why])
    for b in cfg.budgets:  # before the expensive part
        check_budget(info.layers, b, cfg.target, cfg.allocation, cands[0])
    handoff_source = HandOffSource(prepared.pipeline, prepared.optimum_folder, cache_dir)
    for handoff in cfg.emit:
        handoff.check(info, handoff_source)
    unmatched = unmatched_patterns(info.layers, cfg.allocation)
    if unmatched:
        note = (f"{', '.join(unmatched)} match{'es' if len(unmatched) == 1 else ''} no layer of this model and pin "
                f"nothing (layer names are in report.md's layer table)")
        log.warning("[allocate] %s", note)
        cfg = replace(cfg, notes=[*cfg.notes, note])

    schedule = model_schedule(sched_path, info.metadata.get(SOURCE_CLASS_KEY) or preview.class_name)
    calib_data = cfg.calib_data or prepared.calib_data
    calibration = replace(cfg.calibration, guidance_scale=prepared.guidance_scale(cfg.calibration.guidance_scale),
                          resolution=cfg.calibration.resolution or prepared.default_resolution)
    with timings.stage("calibrate"):  # checks the user's inputs first
        stats = calibrate(info, calibration, schedule, calib_data, cache_dir, cfg.runtime, input_statistics=cfg.gptq)
    notes = list(cfg.notes) + list(cfg.decisions) + prepared.notes + schedule_notes(schedule)
    ranges, act_costs = _activation_ranges(cfg, info, stats, notes, timings)
    cfg.target.check_activation_ranges(info, ranges.observed_max)
    imp, sens, cands = _importance(cfg, info, stats, ranges, cands, cache_dir, timings)
    fmt_error = _format_errors(cfg, info, stats, ranges, cands, sens, timings)

    trajectory = Trajectory(schedule, stats.settings.steps, stats.step_indices, sample_shape(info, calibration.resolution),
                            calib_data, stats.settings.seq_len, stats.settings.guidance)
    with timings.stage("fp32_reference"):  # one FP32 run serves every comparison below
        validator = Validator.of(info, trajectory, cfg.validation, cfg.runtime)
    float_val = None
    if cfg.target.compare_with is not None:
        with timings.stage("fp16_graph_validation"):
            float_val = float_graph_validation(cfg.target, validator)
    # an export made for this run only (--no-cache, or a cache it cannot write) is kept in the output, so
    # the report's model and its Polygraphy commands name a file that exists after the run
    keep_export = bool(prepared.temp_dir) and os.path.abspath(model_path).startswith(os.path.abspath(prepared.temp_dir))
    reference_model = os.path.join(os.path.abspath(out_root), FP32_FOLDER, os.path.basename(model_path)) \
        if keep_export else model_path
    shared = _SharedResults(cfg=cfg, model_path=reference_model, info=info, stats=stats, ranges=ranges, act_costs=act_costs,
                            importance=imp, sensitivity=sens, format_error=fmt_error, cands=cands, validator=validator, float_validation=float_val,
                            vae_dir=prepared.pipeline.vae_dir if prepared.pipeline else None,
                            handoff_source=handoff_source, notes=notes)
    # every allocation first: a budget that cannot be written fails the run before anything is written
    allocations = [_allocate_budget(shared, budget, timings) for budget in cfg.budgets]
    multi = len(cfg.budgets) > 1
    with staging_folder(out_root) as tmp_root:  # a budget list is published whole, as one folder
        results = []
        for (alloc, alloc_notes), out in zip(allocations, out_dirs):
            tmp = os.path.join(tmp_root, os.path.basename(out)) if multi else tmp_root
            os.makedirs(tmp, exist_ok=True)
            results.append(_run_budget(shared, alloc, alloc_notes, tmp, out, timings.copy(), cache_dir))
        if multi:
            from mpq_export.report.sweep import write_pareto

            write_pareto(tmp_root, [r.report for r in results])
        if keep_export:
            shutil.move(os.path.dirname(model_path), os.path.join(tmp_root, FP32_FOLDER))
    for r in results:
        log.info("[report] %s (SQNR %.2f dB, sample PSNR %.2f dB)", r.out_dir, r.report.validation.mean_sqnr_db,
                 r.report.validation.sample_psnr_db)
    return PipelineResult(model_path=reference_model, info=info, stats=stats, importance=imp, act_ranges=ranges, results=results,
                          out_root=out_root)


def _activation_ranges(cfg: PipelineConfig, info: ModelInfo, stats: CalibrationStats, notes: list[str],
                       timings: StageTimes) -> tuple[ActivationRanges, list | None]:
    """INT8 activation thresholds from the calibration histograms, and (for the report) what each costs alone."""
    with timings.stage("activation_ranges"):
        ranges = choose_ranges(stats.act_hist, cfg.act_calib)
        act_costs = None
        if cfg.act_costs:
            act_costs, secs = activation_costs(info, stats, ranges,
                                               time_limit_s=cfg.act_costs_limit_s, runtime=cfg.runtime)
            if act_costs is None:
                notes.append(f"the activation-cost table was skipped: measuring every activation quantizer alone "
                             f"would take about {secs:.0f} s here (limit {cfg.act_costs_limit_s:.0f} s)")
    log.info("[calibrate] activation ranges by %s: thresholds at %.2f of the observed max on average",
             cfg.act_calib.method, ranges.clipped_fraction())
    return ranges, act_costs


def _importance(cfg: PipelineConfig, info: ModelInfo, stats: CalibrationStats, ranges: ActivationRanges, cands,
                cache_dir: str | None, timings: StageTimes) -> tuple[LayerImportance, SensitivityScores | None, tuple]:
    """ORM importance (always: the report and the stability study use it) and, on request, measured sensitivity."""
    with timings.stage("orm"):
        imp = importance_of(stats, cfg.orm)
    cands = for_time_only_layers(cands, info.layers, set(imp.excluded))
    sens = None
    if cfg.importance.measured:
        from mpq_export.stages.sensitivity import measure_sensitivity

        with timings.stage("sensitivity"):
            sens = measure_sensitivity(info, stats, ranges, cands[0], cfg.quantize, cfg.orm.alpha, cache_dir,
                                       cfg.runtime, scorer=cfg.importance)
    elif cfg.importance.from_errors:
        from mpq_export.stages.scores import error_scores

        with timings.stage("scores"):
            sens = error_scores(info, stats, ranges, cands[0], cfg.quantize, cfg.importance, imp.theta,
                                cfg.orm.alpha, cache_dir, cfg.runtime)
    return imp, sens, cands


def _format_errors(cfg: PipelineConfig, info: ModelInfo, stats: CalibrationStats, ranges: ActivationRanges, cands,
                   sens: SensitivityScores | None, timings: StageTimes) -> dict[str, dict[str, float]] | None:
    """The expected error of each format of equal bits (w8a8 and fp8) on the layers offered both; None when
    no layer is, or when measured sensitivity decides (its probes cover every format)."""
    if sens is not None:
        return None
    tied = equal_bit_alternatives(info.layers, cands[0])
    if not tied:
        return None
    from mpq_export.stages.format_error import expected_format_error

    with timings.stage("format_error"):
        err = expected_format_error(info, tied, stats, ranges, cfg.quantize)
    log.info("[format error] expected error of %d layers' formats of equal bits (%s)", len(err),
             ", ".join(sorted({f for e in err.values() for f in e})))
    return err


def _run_budget(run: _SharedResults, alloc: BitAllocation, notes: list[str], tmp: str, out: str,
                timings: StageTimes, cache_dir: str | None) -> BudgetResult:
    """quantize (+ count, rule check) -> build -> validate -> report, written into `tmp`, which becomes `out`."""
    # a target compared with another writes the same integers twice: each layer's are computed once
    weight_memo = {} if run.cfg.target.compare_with is not None else None
    qm, counted, checker = _quantize_checked(run, alloc, os.path.join(tmp, OUTPUT_MODEL), timings, weight_memo)
    engine = _build(run, qm.path, cache_dir, timings)
    with timings.stage("validate"):
        val = run.validator.validate(qm.path)
    if not (np.isfinite(val.sample_psnr_db) and np.isfinite(val.mean_sqnr_db)):  # never publish a broken model
        raise MPQError(f"the quantized model's own validation is not finite (sample PSNR {val.sample_psnr_db}, noise SQNR "
                       f"{val.mean_sqnr_db} dB: NaN or Inf outputs) at {alloc.achieved_bits:.3f} bits; nothing was "
                       f"published: try a larger budget, --target onnxruntime, or rerun with -v and report it")
    np.savez(os.path.join(tmp, "validation_inputs.npz"), **val.inputs)
    from mpq_export.runtime import polygraphy_replay

    replay = polygraphy_replay.write_files(tmp, out, run.info, run.model_path, run.stats.schedule.num_train_timesteps,
                                           run.validator.trajectory.shape, int(val.inputs[run.info.sample.name].shape[1]),
                                           with_tensorrt=run.cfg.target.builds_engines)
    if run.cfg.sample_grid:
        _sample_grid(run, val, alloc, tmp, timings)
    compared = None
    if weight_memo is not None:
        with timings.stage("compare_targets"):
            rows = compare_targets(run.cfg.target, run.validator, alloc, run.ranges, run.cfg.quantize, run.stats,
                                   val, run.float_validation, weight_memo)
        compared = [TargetComparisonRow.of(r.label, r.validation) for r in rows if r.validation is not None]
        notes = notes + [f"same allocation per target: {r.label}" for r in rows if r.validation is None]
        del weight_memo
    handoff = []
    for h in run.cfg.emit:
        with timings.stage("emit"):
            handoff.append(h.emit(qm.path, run.info, tmp, out, run.handoff_source))
    report = _report(run, _BudgetOutputs(alloc, out, qm, counted, checker, engine, val, replay, compared, handoff,
                                         notes), timings)
    with open(os.path.join(tmp, "allocation.json"), "w") as f:
        json.dump(alloc.to_json(), f, indent=2)
    from mpq_export.report.files import write_report

    write_report(report, tmp)
    return BudgetResult(budget=alloc.budget, out_dir=out, allocation=alloc, report=report)


def _allocate_budget(run: _SharedResults, budget: float, timings: StageTimes) -> tuple[BitAllocation, list[str]]:
    with timings.stage("allocate"):
        sens = run.sensitivity
        alloc = allocate(run.info.layers, budget, run.cfg.target, run.cfg.allocation,
                         theta=run.importance.theta if run.importance is not None else None,
                         sensitivity=sens.scores if sens is not None else None, format_error=run.format_error,
                         cands=run.cands, measured_by=sens.scorer if sens is not None else Scorer.SENSITIVITY)
    log.info("[allocate] %s: %.4f average bits (budget %g)", alloc.method, alloc.achieved_bits, budget)
    notes = list(run.notes)
    _, ceiling = reachable_range(run.info.layers, run.cands[0])
    if budget > ceiling + 1e-3:
        notes.append(f"the budget {budget:g} is above the most this model can store with its candidate formats "
                     f"({ceiling:.4f} bits): every layer takes its largest format")
    if not alloc.within_budget:
        notes.append(f"the {alloc.method} allocation sits at {alloc.achieved_bits:.4f} bits, above the budget "
                     f"{budget:g}: pinned layers keep their pin")
    return alloc, notes


def _quantize_checked(run: _SharedResults, alloc: BitAllocation, path: str, timings: StageTimes,
                      weight_memo: dict | None = None) -> tuple[QuantizedModel, float, str | None]:
    """The Q/DQ model, its stored bits counted from the file, and the target's rule checker's verdict."""
    log.info("[quantize] writing the %s target's Q/DQ model", run.cfg.target.name)
    with timings.stage("quantize"):
        qm = quantize(run.info, alloc, run.ranges, path, run.cfg.quantize, run.cfg.target,
                      stats=run.stats, weight_memo=weight_memo)
    counted, _ = count_weight_bits(path, run.info)
    if abs(counted - alloc.achieved_bits) > 1e-6:  # the budget, the report and the file count one number
        raise MPQError(f"internal: the written model stores {counted:.4f} average weight bits, the allocation "
                       f"{alloc.achieved_bits:.4f}")
    return qm, counted, run.cfg.target.check_graph(path)


def _build(run: _SharedResults, q_path: str, cache_dir: str | None, timings: StageTimes) -> EngineStatus:
    from mpq_export.runtime.engine import EngineSettings, EngineStatus, build_engine_or_explain

    if not run.cfg.target.builds_engines or run.cfg.build_engine is BuildMode.NO:
        return EngineStatus("not requested")
    # the timing cache makes rebuilds (another budget, another run) much faster
    settings = EngineSettings(timing_cache=os.path.join(cache_dir, "tensorrt-timing.cache") if cache_dir else None)
    with timings.stage("build"):
        return build_engine_or_explain(q_path, run.info, run.validator.trajectory.shape, settings,
                                       required=run.cfg.build_engine is BuildMode.YES)


def _sample_grid(run: _SharedResults, val: ValidationResult, alloc: BitAllocation, out_dir: str,
                 timings: StageTimes) -> None:
    from mpq_export.report.plots import sample_grid

    fp, qu, what = val.samples_fp32, val.samples_quant, "same seeds"
    if run.vae_dir is not None:  # latents of a text-to-image pipeline: show them through its VAE
        from mpq_export.inputs.sd_pipeline import decode_latents

        with timings.stage("decode_samples"):
            fp, qu = decode_latents(run.vae_dir, fp[:8]), decode_latents(run.vae_dir, qu[:8])
        what = "same seeds and prompts, decoded by the pipeline's VAE"
    sample_grid(fp, qu, os.path.join(out_dir, "samples.png"),
                f"FP32 (top) vs {alloc.method} {alloc.achieved_bits:.2f} bits (bottom), {what}")


@dataclass
class _BudgetOutputs:
    """What one budget's stages produced, for its report."""
    alloc: BitAllocation
    out: str  # where the folder is published
    qm: QuantizedModel
    counted: float  # average stored bits counted from the written file
    checker: str | None  # the target's rule checker's verdict
    engine: EngineStatus
    val: ValidationResult
    replay: object  # runtime.polygraphy_replay.PolygraphyReplay
    compared: list[TargetComparisonRow] | None
    handoff: list
    notes: list[str]


def _report(run: _SharedResults, o: _BudgetOutputs, timings: StageTimes) -> Report:
    from mpq_export.report.records import calibration_summary, layer_rows, orm_summary, timestep_importance

    cfg, info, imp, alloc, qm = run.cfg, run.info, run.importance, o.alloc, o.qm
    stability = None
    if cfg.stability and imp is not None and alloc.method == "mpq" and alloc.scorer is Scorer.ORM:
        with timings.stage("stability"):
            stability = allocation_stability(info, run.stats, cfg.orm, imp, cfg.target, cfg.allocation, run.cands, alloc,
                                             run.format_error)
    return Report(
        model=os.path.abspath(run.model_path), input=os.path.abspath(cfg.model),
        output_model=os.path.join(os.path.abspath(o.out), OUTPUT_MODEL), budget=alloc.budget,
        achieved_bits=alloc.achieved_bits, counted_bits=o.counted, within_budget=alloc.within_budget,
        target=cfg.target.name, importance_method=cfg.importance if alloc.method == "mpq" else Scorer.NONE,
        total_params=info.total_params, format_counts=dict(Counter(f.name for f in alloc.formats)),
        allocation=alloc.summary(), layers=layer_rows(info, alloc, qm.layer_storage, imp, run.sensitivity),
        importance=orm_summary(imp), importance_per_timestep=timestep_importance(run.stats, imp),
        calibration=calibration_summary(run.stats, run.ranges, run.act_costs, qm.act_scales),
        validation=o.val.summary(), polygraphy=o.replay, engine=o.engine, notes=o.notes, check=o.checker,
        validation_compare=o.compared, stability=stability, handoff=o.handoff,
        gpu=f"{cfg.target.gpu.name} ({cfg.target.gpu_reason})" if cfg.target.gpu is not None else None,
        timings=dict(timings), peak_rss_mb=dict(timings.peak_rss_mb))
