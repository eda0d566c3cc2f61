"""The one configuration of a run: `PipelineConfig`, and every check between options.

Each settings class checks its own fields; what depends on two of them (an option another one makes
meaningless, a setting the chosen target cannot build) is checked here, once, so the CLI and Python
callers get the same refusals before any work. Nothing is overwritten silently: a combination that
would be ignored is an error naming the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mpq_export.core.choices import BuildMode, Scorer, Switch
from mpq_export.handoffs import HandOff, get_handoff
from mpq_export.runtime.ort import RuntimeSettings
from mpq_export.stages.act_ranges import ActCalibSettings
from mpq_export.stages.allocate import AllocationSettings, budget_value
from mpq_export.stages.calibrate import CalibrationSettings
from mpq_export.stages.orm import OrmSettings
from mpq_export.formats import QuantizeSettings
from mpq_export.stages.validate import ValidationSettings
from mpq_export.targets import DEFAULT_TARGET, Target, all_targets, get_target
from mpq_export.targets.gpus import DEFAULT_GPU, FAMILIES
from mpq_export.util.errors import MPQError, comma_list, require_path

# 8 average bits is reachable on every target (each op type has an 8-bit format) for any model with a
# quantizable layer left unpinned: W8A8 where the scorer sees no reason to spend bits elsewhere
DEFAULT_BUDGETS = (8.0,)
# the scorer of --allocation mpq unless --importance says otherwise: probed (on the bundled transformer it beat
# ORM by 1.7 to 8.7 dB at 4.5 to 7 bits, docs/quality.md) unless its probes would cost more than twice
# calibration's forwards, then orm-error, which costs none (stages/scores.auto_scorer)
DEFAULT_SCORER = Scorer.AUTO


@dataclass
class PipelineConfig:
    model: str  # an .onnx file, a diffusers UNet folder or a diffusers pipeline folder
    budgets: tuple[float, ...] = DEFAULT_BUDGETS
    out_dir: str | None = None  # default ./<model stem>.mpq
    target: str | Target = DEFAULT_TARGET  # a name, resolved to the Target object
    gpu: str = DEFAULT_GPU  # tensorrt target: the GPU family whose formats the engine may use (targets/gpus.py)
    allocation: AllocationSettings = field(default_factory=AllocationSettings)
    # what the mpq allocation's scores are (core/choices.py); None: DEFAULT_SCORER (docs/quality.md chose it)
    importance: Scorer | str | None = None
    orm: OrmSettings = field(default_factory=OrmSettings)
    calibration: CalibrationSettings = field(default_factory=CalibrationSettings)
    act_calib: ActCalibSettings = field(default_factory=ActCalibSettings)
    validation: ValidationSettings = field(default_factory=ValidationSettings)
    quantize: QuantizeSettings = field(default_factory=QuantizeSettings)
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    calib_data: str | None = None
    prompts: str | None = None  # pipeline folders: one prompt per line (None: the bundled prompt set)
    scheduler_config: str | None = None
    cache_dir: str | None = None  # None: $MPQ_EXPORT_CACHE or ~/.cache/mpq-export; "" disables
    sample_name: str | None = None
    timestep_name: str | None = None
    build_engine: BuildMode | str = BuildMode.AUTO
    stability: bool = True  # report how many layers move when K, alpha, beta change
    act_costs: bool = True  # measure each activation quantizer alone for the report ...
    act_costs_limit_s: float = 120.0  # ... unless that would take longer than this (large models)
    sample_grid: bool = True
    emit: tuple[str | HandOff, ...] = ()  # hand-offs written beside the model (names, resolved to handoffs/ objects)
    notes: list[str] = field(default_factory=list)
    # what the library decided for an 'auto' setting, and why (the report's notes): filled by __post_init__
    decisions: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.target = get_target(self.target).for_gpu(self.gpu)
        _check_formats(self.allocation.formats, self.target)
        given = self.importance is not None
        self.importance = Scorer.of(self.importance, "--importance") if given else (
            DEFAULT_SCORER if self.allocation.method == "mpq" else Scorer.ORM)  # a baseline reads no scores
        self.build_engine = BuildMode.of(self.build_engine, "--build-engine")
        self.model = require_path(self.model, "the model")
        if self.out_dir is not None:
            if isinstance(self.out_dir, str) and not self.out_dir.strip():
                raise MPQError("-o is empty; give an output folder name (default ./<model>.mpq)")
            self.out_dir = require_path(self.out_dir, "-o")
        self.budgets = _budgets(self.budgets)
        self.emit = tuple(dict.fromkeys(h if isinstance(h, HandOff) else get_handoff(h) for h in comma_list(self.emit)))
        if given and self.importance is not Scorer.ORM and self.allocation.method != "mpq":  # probes for nothing
            raise MPQError(f"--importance {self.importance} scores layers for --allocation mpq (this run: --allocation "
                           f"{self.allocation.method}, which does not read scores); drop --importance or use "
                           f"--allocation mpq")
        auto = self.quantize.reduce_range is Switch.AUTO
        self.quantize, why = self.target.resolve_quantize_settings(self.quantize)
        if auto:
            self.decisions = list(why)
        self.target.check_quantize_settings(self.quantize)
        for handoff in self.emit:  # each runtime loads one target's graph
            if handoff.name not in self.target.handoffs:
                owner = next(t.name for t in all_targets() if handoff.name in t.handoffs)
                raise MPQError(f"--emit {handoff.name} hands the {owner} target's graph to its runtime (this run: "
                               f"--target {self.target.name}); use --target {owner} or drop --emit {handoff.name}")
        if self.quantize.fp8_attention:
            if "fp8" not in self.target.format_names():
                fix = (f"add --gpu ada, hopper or blackwell (the table used: {self.target.gpu.name})"
                       if self.target.gpu is not None else "use --target tensorrt with --gpu ada, hopper or blackwell")
                raise MPQError(f"--fp8-attention needs a target and GPU that run FP8; {fix}")
            if not self.calibration.attention_inputs:  # its scales come from Q, K and V's calibrated ranges
                from dataclasses import replace

                self.calibration = replace(self.calibration, attention_inputs=True)
        if self.build_engine is BuildMode.YES and not self.target.builds_engines:
            raise MPQError(f"--build-engine yes builds TensorRT engines, which the {self.target.name} target does not "
                           f"use; drop --build-engine or use --target "
                           f"{next(t.name for t in all_targets() if t.builds_engines)}")

    @property
    def model_request(self):
        """What inputs/prepare.py needs of this configuration."""
        from mpq_export.inputs.prepare import ModelRequest

        return ModelRequest(self.model, self.prompts, self.calib_data, self.scheduler_config, self.calibration.resolution,
                            self.calibration.seq_len, self.calibration.guidance_scale)

    @property
    def gptq(self) -> bool:
        """GPTQ rounding reads the layers' input statistics from calibration; nothing else does."""
        return self.quantize.rounding == "gptq"


def _check_formats(names: tuple[str, ...] | None, target: Target) -> None:
    """--formats names only formats the chosen target (and GPU family) stores, and some quantized one."""
    if names is None:
        return
    have = target.format_names()
    missing = [n for n in names if n not in have]
    if missing:
        elsewhere = ""
        if target.gpu is not None:
            fams = [f.name for f in FAMILIES if all(any(m == g.name for fmts in f.adds.values() for g in fmts)
                                                    for m in missing)]
            if fams:
                elsewhere = f" (the table used: {target.gpu.name}; --gpu {fams[0]} runs {', '.join(missing)})"
        raise MPQError(f"--formats {','.join(missing)}: not stored by the {target.name} target{elsewhere}; "
                       f"it stores {', '.join(have)}")


def _budgets(budgets) -> tuple[float, ...]:
    """The budgets as numbers: one number, a sequence, or a comma list as the CLI takes it ("6,7"). This is
    the one place a budget is checked as a number; whether a model reaches it is allocate.check_budget's."""
    budgets = tuple(budget_value(b) for b in comma_list(budgets))
    if not budgets:
        raise MPQError("give at least one --budget")
    seen: dict[str, float] = {}
    for b in budgets:  # a budget list writes one budget-<b:g> folder per budget
        if f"{b:g}" in seen:
            same = f"{b:g} twice" if seen[f"{b:g}"] == b else f"{seen[f'{b:g}']!r} and {b!r}, which name one output"
            raise MPQError(f"--budget lists {same}; give each budget once")
        seen[f"{b:g}"] = b
    return budgets
