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
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from mpq_export.act_ranges import ActCalibSettings, ActivationRanges, choose_ranges
from mpq_export.allocate import AllocationSettings, BitAllocation, allocate, check_budget
from mpq_export.calibrate import CalibrationSettings, CalibrationStats, calibrate, sample_shape
from mpq_export.errors import MPQError, require_number, require_path
from mpq_export.inspect import ModelInfo, inspect_model
from mpq_export.orm import LayerImportance, OrmSettings, compute_importance
from mpq_export.output_folder import OUTPUT_MODEL, SCRATCH_PREFIX, output_folders, remove_stale_scratch, staging_folder
from mpq_export.progress import log
from mpq_export.quantize import QuantizedModel, QuantizeSettings, count_weight_bits, quantize
from mpq_export.report import Report, TargetComparisonRow
from mpq_export.sampler import NoiseSchedule
from mpq_export.stage_times import StageTimes
from mpq_export.validate import FP32Reference, ValidationResult, ValidationSettings, fp32_reference, validate

if TYPE_CHECKING:
    from mpq_export.build import EngineStatus
    from mpq_export.sd_pipeline import PipelineFolder
    from mpq_export.sensitivity import SensitivityScores

IMPORTANCES = ("orm", "sensitivity", "trajectory")  # the last two: sensitivity.py's two objectives
BUILD_MODES = ("auto", "yes", "no")


@dataclass
class PipelineConfig:
    model: str  # an .onnx file or a diffusers UNet folder
    budgets: tuple[float, ...] = (4.5,)
    out_dir: str | None = None  # default ./<model stem>.mpq
    allocation: AllocationSettings | None = None  # budget inside is replaced per budget
    importance: str = "orm"  # orm | sensitivity | trajectory
    orm: OrmSettings = field(default_factory=OrmSettings)
    calibration: CalibrationSettings = field(default_factory=CalibrationSettings)
    act_calib: ActCalibSettings = field(default_factory=ActCalibSettings)
    validation: ValidationSettings = field(default_factory=ValidationSettings)
    quantize: QuantizeSettings = field(default_factory=QuantizeSettings)
    calib_data: str | None = None
    prompts: str | None = None  # pipeline folders: one prompt per line (None: the bundled prompt set)
    guidance_scale: float | None = None  # classifier-free guidance; None: the pipeline type's default, else 1
    scheduler_config: str | None = None
    cache_dir: str | None = None  # None: $MPQ_EXPORT_CACHE or ~/.cache/mpq-export; "" disables
    sample_name: str | None = None
    timestep_name: str | None = None
    build_engine: str = "auto"
    stability: bool = True  # report how many layers move when K, alpha, beta change
    act_costs: bool = True  # measure each activation quantizer alone for the report ...
    act_costs_limit_s: float = 120.0  # ... unless that would take longer than this (large models)
    sample_grid: bool = True
    notes: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.importance not in IMPORTANCES:
            raise MPQError(f"--importance must be one of {', '.join(IMPORTANCES)}, got '{self.importance}'")
        if self.build_engine not in BUILD_MODES:
            raise MPQError(f"--build-engine must be one of {', '.join(BUILD_MODES)}, got '{self.build_engine}'")
        self.model = require_path(self.model, "the model")
        if self.out_dir is not None:
            self.out_dir = require_path(self.out_dir, "-o")
        if isinstance(self.budgets, (str, bytes)) or not hasattr(self.budgets, "__iter__"):
            self.budgets = (self.budgets,)  # one budget given bare; checked as a number below
        self.budgets = tuple(require_number(b, "--budget") for b in self.budgets)
        if not self.budgets:
            raise MPQError("give at least one --budget")
        seen: dict[str, float] = {}
        for b in self.budgets:  # a budget list writes one budget-<b:g> folder per budget
            if f"{b:g}" in seen:
                same = f"{b:g} twice" if seen[f"{b:g}"] == b else f"{seen[f'{b:g}']!r} and {b!r}, which name one output"
                raise MPQError(f"--budget lists {same}; give each budget once")
            seen[f"{b:g}"] = b
        g = self.guidance_scale
        if g is not None and (isinstance(g, bool) or not isinstance(g, (int, float)) or not np.isfinite(g) or g < 1):
            raise MPQError(f"--guidance-scale must be a number >= 1 (1: no guidance), got {g!r}")
        if self.allocation is None:
            self.allocation = AllocationSettings(budget=self.budgets[0], target=self.quantize.target)
        if self.importance != "orm" and self.allocation.method != "mpq":  # its probes would run for nothing
            raise MPQError(f"--importance {self.importance} scores layers for --allocation mpq (this run: --allocation "
                           f"{self.allocation.method}, which does not read scores); drop --importance or use "
                           f"--allocation mpq")
        # one target for the format table the allocator picks from and the graph quantize writes
        self.allocation = replace(self.allocation, target=self.quantize.target)
        # GPTQ rounding needs the layers' input statistics from calibration; nothing else reads them
        # (at Stable-Diffusion size they are 5 % of calibration's time)
        gptq = self.quantize.rounding == "gptq"
        if self.calibration.input_hessians != gptq:
            self.calibration = replace(self.calibration, input_hessians=gptq)


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


def default_cache_dir() -> str:
    return os.environ.get("MPQ_EXPORT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "mpq-export")


@dataclass
class PreparedModel:
    onnx_path: str  # the FP32 ONNX the run starts from
    scheduler_config: str | None
    notes: list[str]
    temp_dir: str | None = None  # an export made without a cache: the caller removes it when done
    pipeline: PipelineFolder | None = None  # when the input is a diffusers text-to-image pipeline folder
    calib_data: str | None = None  # the pipeline's prompts encoded by its text encoder (.npz, sd_pipeline)

    def guidance_scale(self, requested: float | None) -> float:
        """The requested scale, else the pipeline type's default when prompts were encoded, else 1 (none)."""
        if requested is not None:
            return float(requested)
        return self.pipeline.default_guidance if self.pipeline is not None and self.calib_data else 1.0


def prepare_model(cfg: PipelineConfig, cache_dir: str | None) -> PreparedModel:
    """The FP32 ONNX of cfg.model: the file itself, or a diffusers UNet (alone or in a pipeline folder)
    exported once per content hash; for a text-to-image pipeline also its prompts, encoded once."""
    from mpq_export.export import is_diffusers_folder, read_unet_config
    from mpq_export.sd_pipeline import is_pipeline_folder, read_pipeline

    if not os.path.exists(cfg.model):
        raise MPQError(f"model not found: {cfg.model} (give an .onnx file, a diffusers UNet folder or a pipeline folder)")
    pipe = read_pipeline(cfg.model) if is_pipeline_folder(cfg.model) else None
    unet_dir = pipe.unet_dir if pipe else cfg.model
    if cfg.prompts is not None and pipe is None:
        raise MPQError("--prompts needs a diffusers pipeline folder (its text encoder encodes them); for a bare UNet "
                       "give encoded prompts with --calib-data FILE.npz")
    if cfg.prompts is not None and cfg.calib_data is not None:
        raise MPQError("give --prompts or --calib-data, not both")
    if not is_diffusers_folder(unet_dir):
        if os.path.isdir(unet_dir):
            inner = os.path.join(unet_dir, "unet")
            if is_diffusers_folder(inner):  # unet/ and scheduler/ saved without the pipeline's model_index.json
                raise MPQError(f"{cfg.model} has no model_index.json but holds a diffusers UNet: give {inner} "
                               f"(a scheduler/ beside it is found)")
            onnx_files = sorted(e for e in os.listdir(unet_dir) if e.endswith(".onnx"))
            if len(onnx_files) == 1:  # a folder an ONNX export was saved into
                raise MPQError(f"{cfg.model} is a folder without config.json or model_index.json; give the ONNX "
                               f"file it holds: {os.path.join(cfg.model, onnx_files[0])}")
            raise MPQError(f"{cfg.model} is a folder without config.json or model_index.json; give an .onnx file, a "
                           f"diffusers UNet folder or a pipeline folder")
        return PreparedModel(cfg.model, cfg.scheduler_config, [])
    unet_cfg = read_unet_config(unet_dir)  # a broken config.json is a one-line error before hashing GBs
    if cfg.prompts is not None and unet_cfg.get("_class_name") != "UNet2DConditionModel":
        raise MPQError(f"--prompts: the UNet of {cfg.model} ({unet_cfg.get('_class_name') or 'unknown'}) takes no "
                       f"text conditioning; drop --prompts")
    prompts = None
    if pipe is not None and unet_cfg.get("_class_name") == "UNet2DConditionModel" and cfg.calib_data is None:
        from mpq_export.sd_pipeline import load_prompts

        prompts = load_prompts(cfg.prompts)  # a bad prompt file fails before the export
    prepared = _export_once(cfg, unet_dir, cache_dir)
    if pipe is not None:
        prepared.pipeline = pipe
        if pipe.scheduler_config and not cfg.scheduler_config:
            prepared.scheduler_config = pipe.scheduler_config
        prepared.notes.insert(0, f"diffusers pipeline folder {pipe.root} ({pipe.class_name or 'no _class_name'})")
        if prompts is not None:
            from mpq_export.sd_pipeline import encode_prompts

            try:
                # without a cache the export lives in temp_dir, removed at the end of the run: so do these
                size = unet_cfg.get("sample_size") or 64
                latent = cfg.calibration.resolution or ((size, size) if isinstance(size, int) else tuple(size))
                pixels = tuple(int(d) * pipe.vae_scale_factor() for d in latent)  # SDXL's time_ids
                emb = encode_prompts(pipe, prompts, cache_dir or prepared.temp_dir, cache_dir, pixels)
            except BaseException:
                if prepared.temp_dir:
                    shutil.rmtree(prepared.temp_dir, ignore_errors=True)
                raise
            prepared.calib_data = emb.path
    return prepared


def _export_once(cfg: PipelineConfig, unet_dir: str, cache_dir: str | None) -> PreparedModel:
    """The FP32 ONNX of a diffusers UNet folder, exported once per content hash (in the cache)."""
    from mpq_export.calibrate import file_sha256
    from mpq_export.export import export_diffusers, find_scheduler_config
    from mpq_export.inspect import load_onnx

    import hashlib

    h = hashlib.sha256()
    for name in sorted(os.listdir(unet_dir)):
        p = os.path.join(unet_dir, name)
        if os.path.isfile(p):  # SD-sized weights are GBs: hashed once, remembered in the cache
            h.update(name.encode())
            h.update(file_sha256(p, cache_dir).encode())
    temp_dir = None if cache_dir else tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}export-{os.getpid()}-")
    folder = os.path.join(cache_dir or temp_dir, f"export-{h.hexdigest()[:20]}")
    onnx_path = os.path.join(folder, "model.onnx")
    sched = cfg.scheduler_config or find_scheduler_config(unet_dir)
    source = os.path.abspath(unet_dir)
    if os.path.exists(onnx_path):
        from mpq_export.onnx_utils import external_data_problem

        try:  # a truncated or damaged export is healed, not reused (checked without loading the weights)
            problem = external_data_problem(load_onnx(onnx_path, load_weights=False), folder)
        except MPQError as e:
            problem = str(e)
        if problem is None:
            log.info("[export] reusing %s", onnx_path)
            return PreparedModel(onnx_path, sched, [f"exported from diffusers folder {source} (cached export)"])
        log.warning("[export] the cached export %s is damaged (%s); exporting again", onnx_path, problem)
        shutil.rmtree(folder, ignore_errors=True)
    tmp = folder + f".tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    log.info("[export] %s -> ONNX (torch)", unet_dir)
    try:
        res = export_diffusers(unet_dir, os.path.join(tmp, "model.onnx"))
        try:
            os.replace(tmp, folder)
        except OSError:  # another run exported the same model meanwhile (and may be reading it): use theirs
            if not os.path.exists(onnx_path):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if temp_dir:
            shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    log.info("[export] %s, %d parameters, %.1fs", res.model_class, res.params, res.seconds)
    notes = [f"exported from diffusers folder {source} ({res.model_class})"]
    if temp_dir:
        notes.append("the FP32 export was made for this run only (--no-cache) and is removed at its end: the "
                     "Polygraphy commands below need the model exported again (run without --no-cache)")
    return PreparedModel(onnx_path, sched, notes, temp_dir)


def compute_importance_for(stats: CalibrationStats, settings: OrmSettings) -> LayerImportance:
    return compute_importance(stats.grams, stats.timesteps, stats.layer_names, settings,
                              stats.schedule.num_train_timesteps)


def allocation_stability(info: ModelInfo, stats: CalibrationStats, orm: OrmSettings, imp: LayerImportance,
                         alloc_settings: AllocationSettings, base: BitAllocation) -> dict[str, int]:
    """How many layers change format when K is halved or alpha / beta are halved or doubled."""
    def changed(imp2):
        a2 = allocate(info.layers, alloc_settings, theta=imp2.theta)
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
        out[label] = changed(compute_importance_for(stats, replace(orm, **kw)))
    return out


def run_pipeline(cfg: PipelineConfig) -> PipelineResult:
    timings = StageTimes().start()
    from mpq_export.ort import providers_for

    providers_for(cfg.calibration.device)  # a missing GPU runtime is a one-line error before any work
    remove_stale_scratch()
    cache_dir = default_cache_dir() if cfg.cache_dir is None else (cfg.cache_dir or None)
    if cache_dir and os.path.exists(cache_dir) and not os.path.isdir(cache_dir):
        log.warning("[cache] %s is not a folder; running without the cache", cache_dir)
        cache_dir = None
    t = time.perf_counter()
    prepared = prepare_model(cfg, cache_dir)
    try:
        return _run_prepared(cfg, prepared, cache_dir, timings, t)
    finally:
        if prepared.temp_dir:  # an export made for this run only (--no-cache)
            shutil.rmtree(prepared.temp_dir, ignore_errors=True)


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
    shape: tuple[int, ...]
    reference: FP32Reference
    fp16_validation: ValidationResult | None  # the FP16 graph alone (tensorrt target)
    vae_dir: str | None  # a text-to-image pipeline's VAE: sample grids are decoded by it
    notes: list[str]


def _run_prepared(cfg: PipelineConfig, prepared: PreparedModel, cache_dir: str | None, timings: StageTimes,
                  t: float) -> PipelineResult:
    model_path, sched_path = prepared.onnx_path, prepared.scheduler_config
    timings["export"] = time.perf_counter() - t
    out_root, out_dirs = output_folders(cfg.model, cfg.out_dir, cfg.budgets)

    t = time.perf_counter()
    info = inspect_model(model_path, cfg.sample_name, cfg.timestep_name)
    timings["inspect"] = time.perf_counter() - t
    log.info("[inspect] %d quantizable layers, %d weight parameters; inputs: sample=%s timestep=%s%s",
             len(info.layers), info.total_params, info.sample.name, info.timestep.name,
             "".join(f" {c.name}" for c in info.conditioning))
    for b in cfg.budgets:  # before the expensive part
        check_budget(info.layers, cfg.allocation, b)

    schedule = NoiseSchedule.from_config(sched_path)
    calib_data = cfg.calib_data or prepared.calib_data
    calibration = replace(cfg.calibration, guidance_scale=prepared.guidance_scale(cfg.guidance_scale))
    t = time.perf_counter()
    stats = calibrate(info, calibration, schedule, calib_data, cache_dir)  # checks the user's inputs first
    timings["calibrate"] = time.perf_counter() - t
    notes = list(cfg.notes) + prepared.notes
    ranges, act_costs = _activation_ranges(cfg, info, stats, notes, timings)
    imp, sens = _importance(cfg, info, stats, ranges, cache_dir, timings)

    shape = sample_shape(info, calibration.resolution)
    t = time.perf_counter()
    ref = fp32_reference(info, schedule, stats.settings.steps, stats.step_indices, shape, cfg.validation, calib_data,
                         stats.settings.seq_len, stats.settings.guidance_scale)  # one FP32 run serves every comparison below
    timings["fp32_reference"] = time.perf_counter() - t
    fp16_val = None
    if cfg.quantize.target == "tensorrt":
        t = time.perf_counter()
        fp16_val = fp16_graph_validation(cfg, info, schedule, stats.settings.steps, stats.step_indices, shape, ref)
        timings["fp16_graph_validation"] = time.perf_counter() - t
    shared = _SharedResults(cfg=cfg, model_path=model_path, info=info, stats=stats, ranges=ranges, act_costs=act_costs,
                            importance=imp, sensitivity=sens, shape=shape, reference=ref, fp16_validation=fp16_val,
                            vae_dir=prepared.pipeline.vae_dir if prepared.pipeline else None, notes=notes)
    results = [_run_budget(shared, budget, out, timings.copy(), cache_dir) for budget, out in zip(cfg.budgets, out_dirs)]
    if len(cfg.budgets) > 1:
        from mpq_export.report import write_pareto

        write_pareto(out_root, [r.report for r in results])
    return PipelineResult(model_path=model_path, info=info, stats=stats, importance=imp, act_ranges=ranges, results=results,
                          out_root=out_root)


def _activation_ranges(cfg: PipelineConfig, info: ModelInfo, stats: CalibrationStats, notes: list[str],
                       timings: StageTimes) -> tuple[ActivationRanges, list | None]:
    """INT8 activation thresholds from the calibration histograms, and (for the report) what each costs alone."""
    t = time.perf_counter()
    ranges = choose_ranges(stats.act_hist, cfg.act_calib)
    act_costs = None
    if cfg.act_costs:
        from mpq_export.sensitivity import activation_costs

        act_costs, secs = activation_costs(info, stats, ranges.amax, ranges.observed_max,
                                           time_limit_s=cfg.act_costs_limit_s)
        if act_costs is None:
            notes.append(f"the activation-cost table was skipped: measuring every activation quantizer alone "
                         f"would take about {secs:.0f} s here (limit {cfg.act_costs_limit_s:.0f} s)")
    timings["activation_ranges"] = time.perf_counter() - t
    log.info("[calibrate] activation ranges by %s: thresholds at %.2f of the observed max on average",
             cfg.act_calib.method, ranges.clipped_fraction())
    return ranges, act_costs


def _importance(cfg: PipelineConfig, info: ModelInfo, stats: CalibrationStats, ranges: ActivationRanges,
                cache_dir: str | None, timings: StageTimes) -> tuple[LayerImportance, SensitivityScores | None]:
    """ORM importance (always: the report and the stability study use it) and, on request, measured sensitivity."""
    t = time.perf_counter()
    imp = compute_importance_for(stats, cfg.orm)
    timings["orm"] = time.perf_counter() - t
    sens = None
    if cfg.importance in ("sensitivity", "trajectory"):
        from mpq_export.sensitivity import measure_sensitivity

        t = time.perf_counter()
        sens = measure_sensitivity(info, stats, ranges.amax, cfg.allocation, cfg.quantize, cfg.orm.alpha, cache_dir,
                                   objective="trajectory" if cfg.importance == "trajectory" else "step")
        timings["sensitivity"] = time.perf_counter() - t
    return imp, sens


def fp16_graph_validation(cfg: PipelineConfig, info: ModelInfo, schedule: NoiseSchedule, steps: int,
                          profiled: np.ndarray, shape: tuple[int, ...], ref: FP32Reference) -> ValidationResult:
    """The FP16 graph alone (no Q/DQ) against FP32: what the tensorrt target costs before quantizing."""
    from mpq_export.fp16_graph import to_fp16_graph
    from mpq_export.quantize import load_for_edit, save_model

    log.info("[fp16 graph] converting the FP32 model to the tensorrt target's FP16 graph to validate it alone")
    with tempfile.TemporaryDirectory(prefix=f"{SCRATCH_PREFIX}fp16-{os.getpid()}-") as d:
        path = os.path.join(d, "model.fp16.onnx")
        save_model(to_fp16_graph(load_for_edit(info.path)), path)
        return validate(info, path, schedule, steps, profiled, shape, cfg.validation, reference=ref,
                        label="validate: FP16 graph alone")


def compare_targets(run: _SharedResults, alloc: BitAllocation, trt_val: ValidationResult,
                    weight_memo: dict | None = None) -> list[TargetComparisonRow]:
    """Validation of the same allocation realised for the onnxruntime target (FP32 graph), and of the
    FP16 graph alone, next to the tensorrt target's figures."""
    cfg, stats = run.cfg, run.stats
    with tempfile.TemporaryDirectory(prefix=f"{SCRATCH_PREFIX}ort-{os.getpid()}-") as d:
        path = os.path.join(d, "model.ort.onnx")
        # conv outputs left float, as on TensorRT: the difference is then the FP16 graph's alone
        log.info("[compare targets] the same allocation as an onnxruntime-target graph")
        quantize(run.info, alloc, run.ranges.amax, path, replace(cfg.quantize, target="onnxruntime", integer_conv=False),
                 hessians=stats.hessians, weight_memo=weight_memo)
        ort_val = validate(run.info, path, stats.schedule, stats.settings.steps, stats.step_indices, run.shape,
                           cfg.validation, reference=run.reference, label="validate: onnxruntime graph")
    return [TargetComparisonRow.of("tensorrt target (FP16 graph + Q/DQ)", trt_val),
            TargetComparisonRow.of("FP32 graph + the same Q/DQ (onnxruntime, conv outputs float)", ort_val),
            TargetComparisonRow.of("FP16 graph alone (no quantization)", run.fp16_validation)]


def _run_budget(run: _SharedResults, budget: float, out: str, timings: StageTimes,
                cache_dir: str | None) -> BudgetResult:
    """allocate -> quantize (+ count, rule check) -> build -> validate -> report, into `out`."""
    alloc, notes = _allocate_budget(run, budget, timings)
    # the tensorrt target's report compares the same integers on an onnxruntime graph: computed once
    weight_memo = {} if run.cfg.quantize.target == "tensorrt" else None
    with staging_folder(out) as tmp:
        qm, counted, checker = _quantize_checked(run, alloc, os.path.join(tmp, OUTPUT_MODEL), timings, weight_memo)
        engine = _build(run, qm.path, cache_dir, timings)
        t = time.perf_counter()
        val = validate(run.info, qm.path, run.stats.schedule, run.stats.settings.steps, run.stats.step_indices,
                       run.shape, run.cfg.validation, reference=run.reference)
        timings["validate"] = time.perf_counter() - t
        np.savez(os.path.join(tmp, "validation_inputs.npz"), **val.inputs)
        from mpq_export import polygraphy_replay

        replay = polygraphy_replay.write_files(tmp, out, run.info, run.model_path, run.stats.schedule.num_train_timesteps)
        if run.cfg.sample_grid:
            _sample_grid(run, val, alloc, tmp, timings)
        compared = None
        if weight_memo is not None:
            t = time.perf_counter()
            compared = compare_targets(run, alloc, val, weight_memo)
            timings["compare_targets"] = time.perf_counter() - t
            del weight_memo
        report = _report(run, alloc, out, qm, counted, checker, engine, val, replay, compared, notes, timings)
        with open(os.path.join(tmp, "allocation.json"), "w") as f:
            json.dump(alloc.to_json(), f, indent=2)
        from mpq_export.report import write_report

        write_report(report, tmp)
    log.info("[report] %s (SQNR %.2f dB, sample PSNR %.2f dB)", out, val.mean_sqnr_db, val.sample_psnr_db)
    return BudgetResult(budget=budget, out_dir=out, allocation=alloc, report=report)


def _allocate_budget(run: _SharedResults, budget: float, timings: StageTimes) -> tuple[BitAllocation, list[str]]:
    t = time.perf_counter()
    alloc = allocate(run.info.layers, replace(run.cfg.allocation, budget=budget),
                     theta=run.importance.theta if run.importance is not None else None,
                     sensitivity=run.sensitivity.scores if run.sensitivity is not None else None)
    timings["allocate"] = time.perf_counter() - t
    if alloc.scorer == "sensitivity" and run.sensitivity is not None and run.sensitivity.objective == "trajectory":
        alloc = replace(alloc, scorer="trajectory")  # the report names which measured error decided
    log.info("[allocate] %s: %.4f average bits (budget %g)", alloc.method, alloc.achieved_bits, budget)
    if not any(f.quantized for f in alloc.formats):
        raise MPQError(f"at --budget {budget:g} every layer stays FP16 (pins or a budget that needs no quantization): "
                       f"there is nothing to quantize; lower the budget or drop --keep-fp16 patterns")
    notes = list(run.notes)
    if not alloc.within_budget:
        notes.append(f"the {alloc.method} allocation sits at {alloc.achieved_bits:.4f} bits, above the budget "
                     f"{budget:g}: pinned layers keep their pin")
    return alloc, notes


def _quantize_checked(run: _SharedResults, alloc: BitAllocation, path: str, timings: StageTimes,
                      weight_memo: dict | None = None) -> tuple[QuantizedModel, float, str | None]:
    """The Q/DQ model, its stored bits counted from the file, and (tensorrt) the rule checker's verdict."""
    t = time.perf_counter()
    log.info("[quantize] writing the %s target's Q/DQ model", run.cfg.quantize.target)
    qm = quantize(run.info, alloc, run.ranges.amax, path, run.cfg.quantize, hessians=run.stats.hessians,
                  weight_memo=weight_memo)
    timings["quantize"] = time.perf_counter() - t
    counted, _ = count_weight_bits(path, run.info)
    if abs(counted - alloc.achieved_bits) > 1e-6:  # the budget, the report and the file count one number
        raise MPQError(f"internal: the written model stores {counted:.4f} average weight bits, the allocation "
                       f"{alloc.achieved_bits:.4f}")
    if run.cfg.quantize.target != "tensorrt":
        return qm, counted, None
    from mpq_export.trt_rules import check_model

    violations = check_model(path)
    if violations:
        raise MPQError(f"internal: the TensorRT graph breaks {len(violations)} rule(s), first: {violations[0]}")
    return qm, counted, "passed: no TensorRT rule violations (mpq-export check)"


def _build(run: _SharedResults, q_path: str, cache_dir: str | None, timings: StageTimes) -> EngineStatus:
    from mpq_export.build import EngineSettings, EngineStatus, build_engine_or_explain

    if run.cfg.quantize.target != "tensorrt" or run.cfg.build_engine == "no":
        return EngineStatus("not requested")
    # the timing cache makes rebuilds (another budget, another run) much faster
    settings = EngineSettings(timing_cache=os.path.join(cache_dir, "tensorrt-timing.cache") if cache_dir else None)
    t = time.perf_counter()
    engine = build_engine_or_explain(q_path, run.info, run.shape, settings, required=run.cfg.build_engine == "yes")
    timings["build"] = time.perf_counter() - t
    return engine


def _sample_grid(run: _SharedResults, val: ValidationResult, alloc: BitAllocation, out_dir: str,
                 timings: StageTimes) -> None:
    from mpq_export.report import sample_grid

    fp, qu, what = val.samples_fp32, val.samples_quant, "same seeds"
    if run.vae_dir is not None:  # latents of a text-to-image pipeline: show them through its VAE
        from mpq_export.sd_pipeline import decode_latents

        t = time.perf_counter()
        fp, qu = decode_latents(run.vae_dir, fp[:8]), decode_latents(run.vae_dir, qu[:8])
        timings["decode_samples"] = time.perf_counter() - t
        what = "same seeds and prompts, decoded by the pipeline's VAE"
    sample_grid(fp, qu, os.path.join(out_dir, "samples.png"),
                f"FP32 (top) vs {alloc.method} {alloc.achieved_bits:.2f} bits (bottom), {what}")


def _report(run: _SharedResults, alloc: BitAllocation, out: str, qm: QuantizedModel, counted: float,
            checker: str | None, engine: EngineStatus, val: ValidationResult, replay,
            compared: list[TargetComparisonRow] | None, notes: list[str], timings: StageTimes) -> Report:
    from mpq_export.report import calibration_summary, layer_rows, orm_summary, timestep_importance

    cfg, info, imp = run.cfg, run.info, run.importance
    stability = None
    if cfg.stability and imp is not None and alloc.method == "mpq" and alloc.scorer == "orm":
        t = time.perf_counter()
        stability = allocation_stability(info, run.stats, cfg.orm, imp, replace(cfg.allocation, budget=alloc.budget),
                                         alloc)
        timings["stability"] = time.perf_counter() - t
    return Report(
        model=os.path.abspath(run.model_path), input=os.path.abspath(cfg.model),
        output_model=os.path.join(os.path.abspath(out), OUTPUT_MODEL), budget=alloc.budget,
        achieved_bits=alloc.achieved_bits, counted_bits=counted, within_budget=alloc.within_budget,
        target=cfg.quantize.target, importance_method=cfg.importance if alloc.method == "mpq" else "none",
        total_params=info.total_params, format_counts=dict(Counter(f.name for f in alloc.formats)),
        allocation=alloc.summary(), layers=layer_rows(info, alloc, qm.layer_storage, imp, run.sensitivity),
        importance=orm_summary(imp), importance_per_timestep=timestep_importance(run.stats, imp),
        calibration=calibration_summary(run.stats, run.ranges, run.act_costs, qm.act_scales),
        validation=val.summary(), polygraphy=replay, engine=engine, notes=notes, check=checker,
        validation_compare=compared, stability=stability,
        timings=dict(timings), peak_rss_mb=dict(timings.peak_rss_mb))
