"""The `mpq-export` command: a thin argparse layer over mpq_export.pipeline.run_pipeline.

    mpq-export MODEL --budget B [-o DIR] ...         quantize (ONNX file, diffusers model or pipeline folder)
    mpq-export --demo [--budget B] [-o DIR]          the whole pipeline on the bundled trained model
    mpq-export check MODEL.mpq.onnx | DIR            check a Q/DQ model (or an output folder's) against TensorRT's rules

User errors (MPQError) become one line on stderr and exit status 1; nothing heavy is imported
before the arguments are parsed, so --help is instant.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Callable

from mpq_export import __version__
from mpq_export.stages.act_ranges import ACT_CALIB_METHODS, DEFAULT_PERCENTILE
from mpq_export.util.errors import MPQError
from mpq_export.formats.gptq import ROUNDINGS
from mpq_export.targets import DEFAULT_TARGET, TARGETS, all_targets, get_target
from mpq_export.formats import FORMATS
from mpq_export.targets.gpus import FAMILIES, GPU_CHOICES

PROG = "mpq-export"


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not usage + message
        self.exit(2, f"{PROG}: error: {message} (see {self.prog} --help)\n")


def _resolution(text: str) -> tuple[int, int]:
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected H or HxW, got '{text}'") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) <= 0:
        raise argparse.ArgumentTypeError(f"expected H or HxW with positive sizes, got '{text}'")
    return parts[0], parts[1]


class _DefaultsHelpFormatter(argparse.HelpFormatter):
    """Help as written: each option's default is appended by the table (from the library), not by argparse,
    whose own defaults are all unset so that only what a user gives reaches the configuration."""


_KEEP = object()  # an Option.convert result: leave the library's default in place


@dataclass(frozen=True)
class Option:
    """One CLI option and the setting it fills: `setting` is a PipelineConfig field, or "group.field" of one
    of its settings records ("calibration.steps"); None for options of the command itself. The default and
    the choices shown come from the library; `convert` maps the parsed value onto the setting's value.
    `example` (extra arguments, the setting's expected value) is what the tests drive through the CLI."""

    flags: tuple[str, ...]
    setting: str | None
    help: str
    group: str = ""
    argparse: dict = field(default_factory=dict)
    convert: Callable | None = None
    example: tuple[tuple[str, ...], object] | None = None
    shows_default: bool = True

    @property
    def dest(self) -> str:
        return self.flags[-1].lstrip("-").replace("-", "_")


def _negate(given: bool):
    return False if given else _KEEP


def _library_default(setting: str):
    """The library's default for a setting path: PipelineConfig's own field, or a field of its records."""
    import dataclasses

    from mpq_export.config import PipelineConfig

    def default(cls, name):
        f = next(f for f in dataclasses.fields(cls) if f.name == name)
        return f.default if f.default is not dataclasses.MISSING else f.default_factory()

    head, _, rest = setting.partition(".")
    value = default(PipelineConfig, head)
    return getattr(value, rest) if rest else value


def options() -> list[Option]:
    """Every option of `mpq-export MODEL`, in --help order. Choice lists come from the library modules
    that own them (numpy-only imports: --help stays light)."""
    from mpq_export.core.choices import BuildMode, Scorer, Switch
    from mpq_export.handoffs import HANDOFF_NAMES, get_handoff
    from mpq_export.runtime.ort import DEVICES
    from mpq_export.stages.allocate import METHODS
    from mpq_export.stages.orm import AGGREGATIONS, ESTIMATORS

    targets = all_targets()
    return [
        Option(("--budget",), "budgets", "the average stored weight bits (FP16 counts 16); a comma list gives one output "
               "per budget. A budget the model cannot reach on the target is refused with the reachable range "
               f"(default: {','.join(f'{b:g}' for b in _library_default('budgets'))}; with --demo: "
               + ", ".join(f"{t.demo_budget:g} on {t.name}" for t in targets) + ")",
               argparse=dict(metavar="B"), example=(("--budget", "6,7"), (6.0, 7.0))),
        Option(("-o", "--output"), "out_dir", "output folder (default ./<model>.mpq)",
               example=(("-o", "elsewhere"), "elsewhere")),
        Option(("--target",), "target", "; ".join(f"{t.name}: {t.help}" for t in targets),
               argparse=dict(choices=TARGETS), convert=get_target,
               example=(("--target", "onnxruntime"), get_target("onnxruntime"))),
        Option(("--emit",), "emit", "also lay the model out where a runtime loads it: " + "; ".join(
                   f"{name} ({get_handoff(name).help})" for name in HANDOFF_NAMES),
               argparse=dict(metavar="LIST"), example=(("--emit", "trt-demo"), (get_handoff("trt-demo"),))),
        Option(("--gpu",), "gpu", "tensorrt target: the GPU that will run the engine, which decides the formats "
               "(auto: the GPU this run sees, else the Ampere-safe table); " + "; ".join(f"{f.name}: {f.examples}"
                                                                                  for f in FAMILIES),
               argparse=dict(choices=GPU_CHOICES), example=(("--gpu", "hopper"), "hopper")),
        # allocation
        Option(("--allocation",), "allocation.method", "mpq: the 0/1 program over the importance scores; others "
               "are baselines", "allocation", dict(choices=METHODS), example=(("--allocation", "uniform"), "uniform")),
        Option(("--importance",), "importance", "the scores the mpq allocation minimises: auto (default): probed, "
               "or orm-error where probed's probes would cost more than twice calibration's forwards (the report "
               "says which); probed: one measured probe per layer times each format's expected error; orm: the "
               "paper's orthogonality metric (maximises bits x importance); orm-error: ORM importance times each "
               "format's expected error; sensitivity: measured noise-prediction error of every layer and format; "
               "trajectory: measured final-sample error of every layer and format (about 10x sensitivity's "
               "forwards; small models)",
               "allocation", dict(choices=Scorer.choices()),
               example=(("--importance", "sensitivity"), "sensitivity")),
        Option(("--bits",), "allocation.bits", "candidate weight bit-widths (4, 8, 16)", "allocation",
               dict(metavar="LIST"), example=(("--bits", "8,16"), (8, 16))),
        Option(("--formats",), "allocation.formats", "restrict the candidate formats by name, e.g. fp16,fp8 for an "
               "all-FP8 model or fp16,w8a8 for all-INT8 (" + ", ".join(f.name for f in FORMATS) + "; default: every "
               "format the target and GPU store)", "allocation", dict(metavar="LIST"),
               example=(("--gpu", "hopper", "--formats", "fp16,fp8"), ("fp16", "fp8"))),
        Option(("--keep-fp16",), "allocation.keep_fp16", "pin matching layers to FP16 (repeatable; conv_in and "
               "conv_out always, unless --no-default-pins)", "allocation", dict(action="append", metavar="REGEX"),
               convert=tuple, example=(("--keep-fp16", "down", "--keep-fp16", "up"), ("down", "up"))),
        Option(("--min8",), "allocation.min8", "hold matching layers at >= 8 bits (repeatable; default: "
               "time_embedding.*, and conv_in/conv_out when they are not FP16)", "allocation",
               dict(action="append", metavar="REGEX"), convert=tuple, example=(("--min8", "mid"), ("mid",))),
        Option(("--no-default-pins",), "allocation.default_pins", "drop the default pins (conv_in and conv_out "
               "FP16; time_embedding >= 8 bits)", "allocation", dict(action="store_true"), convert=_negate,
               example=(("--no-default-pins",), False)),
        Option(("--seed",), "allocation.seed", "seed of --allocation random (default: 0)", "allocation",
               dict(type=int), example=(("--allocation", "random", "--seed", "3"), 3)),
        # ORM importance
        Option(("--orm-estimator",), "orm.estimator", "linear-CKA estimator: unbiased HSIC (docs/quality.md) or "
               "OMPQ's biased one", "ORM importance", dict(choices=ESTIMATORS),
               example=(("--orm-estimator", [e for e in ESTIMATORS if e != _library_default("orm.estimator")][0]),
                        [e for e in ESTIMATORS if e != _library_default("orm.estimator")][0])),
        Option(("--alpha",), "orm.alpha", "timestep weight w_t = exp(-alpha t / T)", "ORM importance",
               dict(type=float), example=(("--alpha", "0.5"), 0.5)),
        Option(("--beta",), "orm.beta", "theta = exp(-beta gamma); default 1/std(gamma)", "ORM importance",
               dict(type=float), example=(("--beta", "2"), 2.0)),
        Option(("--agg",), "orm.agg", "aggregation over timesteps", "ORM importance", dict(choices=AGGREGATIONS),
               example=(("--agg", [a for a in AGGREGATIONS if a != _library_default("orm.agg")][0]),
                        [a for a in AGGREGATIONS if a != _library_default("orm.agg")][0])),
        # calibration
        Option(("--steps",), "calibration.steps", "sampler steps of the trajectory (DDIM, or flow matching's Euler for flow models)", "calibration",
               dict(type=int), example=(("--steps", "12"), 12)),
        Option(("--timesteps",), "calibration.timesteps", "profiled steps K, evenly spaced", "calibration",
               dict(type=int), example=(("--timesteps", "3"), 3)),
        Option(("--samples",), "calibration.samples", "samples N per profiled step", "calibration", dict(type=int),
               example=(("--samples", "9"), 9)),
        Option(("--calib-seed",), "calibration.seed", "seed of the calibration samples", "calibration",
               dict(type=int), example=(("--calib-seed", "5"), 5)),
        Option(("--resolution",), "calibration.resolution", "sample H or HxW when the model does not fix it",
               "calibration", dict(type=_resolution), example=(("--resolution", "8x16"), (8, 16))),
        Option(("--seq-len",), "calibration.seq_len", "encoder_hidden_states length when dynamic", "calibration",
               dict(type=int), example=(("--seq-len", "12"), 12)),
        Option(("--calib-data",), "calib_data", "conditioning inputs (arrays named like the model inputs; with "
               "guidance also uncond_<name>)", "calibration", dict(metavar="FILE.npz"),
               example=(("--calib-data", "c.npz"), "c.npz")),
        Option(("--prompts",), "prompts", "pipeline folders: calibration prompts, one per line (default: the "
               "bundled prompt set)", "calibration", dict(metavar="FILE"), example=(("--prompts", "p.txt"), "p.txt")),
        Option(("--guidance-scale",), "calibration.guidance_scale", "classifier-free guidance of the calibration "
               "and validation sampler (1: none; default: 7.5 for SD 1.x/2.x pipeline folders, 5 for SDXL ones, else 1)",
               "calibration", dict(type=float), example=(("--guidance-scale", "3"), 3.0)),
        Option(("--scheduler-config",), "scheduler_config", "diffusers scheduler_config.json (default: found "
               "beside a diffusers folder)", "calibration", example=(("--scheduler-config", "s.json"), "s.json")),
        Option(("--sample-name",), "sample_name", "name of the noisy-sample input (default: detected)",
               "calibration", example=(("--sample-name", "x"), "x")),
        Option(("--timestep-name",), "timestep_name", "name of the timestep input (default: detected)",
               "calibration", example=(("--timestep-name", "t"), "t")),
        Option(("--cache-dir",), "cache_dir", "calibration cache (default $MPQ_EXPORT_CACHE or "
               "~/.cache/mpq-export)", "calibration", example=(("--cache-dir", "cc"), "cc")),
        Option(("--no-cache",), "cache_dir", "neither read nor write the calibration cache", "calibration",
               dict(action="store_true"), convert=lambda given: "" if given else _KEEP,
               example=(("--no-cache",), "")),
        Option(("--act-calib",), "act_calib.method", "how each INT8 activation threshold is chosen from the "
               "calibration histograms (docs/quality.md)", "calibration", dict(choices=ACT_CALIB_METHODS),
               example=(("--act-calib", "percentile"), "percentile")),
        Option(("--act-percentile",), "act_calib.percentile", "percentile of |x| for --act-calib percentile "
               f"(default: {DEFAULT_PERCENTILE})", "calibration", dict(type=float),
               example=(("--act-calib", "percentile", "--act-percentile", "99.5"), 99.5)),
        Option(("--calib-mem-mb",), "calibration.mem_budget_mb", "tensors fetched per onnxruntime call (MB): "
               "bounds the rows per call", "calibration", dict(type=int), example=(("--calib-mem-mb", "64"), 64)),
        Option(("--gram-mem-mb",), "calibration.gram_mem_mb", "exact ORM Grams while one step's layer outputs "
               "over all rows fit in this (MB); else sketched", "calibration", dict(type=int),
               example=(("--gram-mem-mb", "32"), 32)),
        Option(("--sketch-dim",), "calibration.sketch_dim", "dimensions of each output row's sketch when the "
               "Grams are sketched", "calibration", dict(type=int), example=(("--sketch-dim", "512"), 512)),
        # quantization, engine, validation
        Option(("--block-size",), "quantize.block_size", "INT4 block size along K for MatMul/Gemm weights",
               "quantization, engine, validation", dict(type=int),
               example=(("--target", "onnxruntime", "--block-size", "64"), 64)),
        Option(("--weight-rounding",), "quantize.rounding", "nearest: round-to-nearest; gptq: GPTQ on the "
               "layers' calibration inputs (docs/quality.md)", "quantization, engine, validation",
               dict(choices=ROUNDINGS), example=(("--weight-rounding", "nearest"), "nearest")),
        Option(("--float-conv-outputs",), "quantize.integer_conv", "onnxruntime target: leave W8A8 convolution "
               "outputs in float (a little more accurate; onnxruntime then runs float convolutions instead of "
               "QLinearConv, docs/speed.md)", "quantization, engine, validation", dict(action="store_true"),
               convert=_negate, example=(("--target", "onnxruntime", "--float-conv-outputs"), False)),
        Option(("--fp8-attention",), "quantize.fp8_attention", "tensorrt target on an FP8 GPU: FP8 Q/DQ on "
               "attention's Q K^T and P V MatMul inputs, for TensorRT's fused FP8 attention (off by default; "
               "docs/quality.md)", "quantization, engine, validation", dict(action="store_true"),
               example=(("--gpu", "hopper", "--fp8-attention"), True)),
        Option(("--reduce-range",), "quantize.reduce_range", "onnxruntime target: INT8 weights of W8A8 "
               "MatMul/Gemm layers in [-63, 63], for onnxruntime's integer GEMM on x86 CPUs without VNNI, which can "
               "saturate with full-range weights (still 8 stored bits); auto: on when the CPU this run sees is x86 "
               "without VNNI (the report says which)", "quantization, engine, validation",
               dict(choices=Switch.choices()), example=(("--target", "onnxruntime", "--reduce-range", "yes"), Switch.YES)),
        Option(("--no-clip-search",), "quantize.clip_search", "plain |max| weight scales instead of the MSE clip "
               "search", "quantization, engine, validation", dict(action="store_true"), convert=_negate,
               example=(("--no-clip-search",), False)),
        Option(("--build-engine",), "build_engine", "build a TensorRT engine (auto: when TensorRT and a GPU are "
               "present)", "quantization, engine, validation", dict(choices=BuildMode.choices()),
               example=(("--build-engine", "no"), "no")),
        Option(("--val-samples",), "validation.samples", "held-back samples for validation",
               "quantization, engine, validation", dict(type=int), example=(("--val-samples", "3"), 3)),
        Option(("--val-seed",), "validation.seed", "first seed of the validation samples (held back: keep it away "
               "from --calib-seed .. --calib-seed + --samples)", "quantization, engine, validation", dict(type=int),
               example=(("--val-seed", "77"), 77)),
        Option(("--no-stability",), "stability", "skip the allocation-stability study in the report",
               "quantization, engine, validation", dict(action="store_true"), convert=_negate,
               example=(("--no-stability",), False)),
        Option(("--no-act-costs",), "act_costs", "skip measuring each activation quantizer alone for the report "
               "(one forward per tensor and step)", "quantization, engine, validation", dict(action="store_true"),
               convert=_negate, example=(("--no-act-costs",), False)),
        Option(("--threads",), "runtime.threads", "onnxruntime threads (0: all cores)",
               "quantization, engine, validation", dict(type=int), example=(("--threads", "1"), 1)),
        Option(("--device",), "runtime.device", "where calibration and validation run: cuda uses onnxruntime's "
               "CUDA provider (onnxruntime-gpu)", "quantization, engine, validation", dict(choices=DEVICES),
               example=(("--device", "cuda"), "cuda")),
    ]


def _help_with_default(opt: Option) -> str:
    if opt.setting is None or not opt.shows_default or "default" in opt.help or opt.argparse.get("action") in ("store_true", "append"):
        return opt.help
    default = _library_default(opt.setting)
    if default is None or default == ():
        return opt.help
    if isinstance(default, tuple):
        default = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in default)
    if isinstance(default, str):  # a name, or a choice (a str enum prints its value)
        return f"{opt.help} (default: {default})"
    return f"{opt.help} (default: {getattr(default, 'name', default)})"


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Mixed-precision INT4/INT8 Q/DQ export of a diffusion denoiser, UNet or transformer (MPQ-Diff).",
                formatter_class=_DefaultsHelpFormatter,
                epilog=f"Also: '{PROG} check MODEL.onnx' checks a Q/DQ model against TensorRT's rules.")
    p.add_argument("model", nargs="?", help="FP32 ONNX denoiser (inputs sample, timestep[, conditioning]), a diffusers model folder "
                   "(config.json + weights: UNet2DModel, UNet2DConditionModel, SD3Transformer2DModel, "
                   "PixArtTransformer2DModel), or a diffusers text-to-image pipeline folder with a UNet "
                   "(model_index.json, unet/, scheduler/, text_encoder/, tokenizer/[, vae/]): calibrated on "
                   "prompts with classifier-free guidance")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--demo", action="store_true", help="run on the bundled trained digits DDPM (needs the [torch] extra)")
    groups = {"": p}
    for opt in options():
        if opt.group not in groups:
            groups[opt.group] = p.add_argument_group(opt.group)
        # unset unless given: the configuration keeps the library's default for whatever is not given
        groups[opt.group].add_argument(*opt.flags, dest=opt.dest, default=argparse.SUPPRESS,
                                       help=_help_with_default(opt), **opt.argparse)
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    p.add_argument("-v", "--verbose", action="store_true", help="on an unexpected failure, print the Python traceback")
    return p


def config_from_args(args, model: str, budgets=None, out_dir: str | None = None):
    """PipelineConfig from parsed arguments through the option table: each given option fills the setting it
    names, the rest keep the library's defaults; every check between options is the library's (config.py)."""
    import dataclasses

    from mpq_export.config import PipelineConfig

    top: dict = {"model": model}
    records: dict[str, dict] = {}
    if budgets is not None:
        top["budgets"] = budgets
    if out_dir is not None:
        top["out_dir"] = out_dir
    for opt in options():
        if opt.setting is None or not hasattr(args, opt.dest):
            continue
        value = getattr(args, opt.dest)
        value = opt.convert(value) if opt.convert else value
        if value is _KEEP:
            continue
        head, _, rest = opt.setting.partition(".")
        if rest:
            records.setdefault(head, {})[rest] = value
        else:
            top[head] = value
    fields = {f.name: f for f in dataclasses.fields(PipelineConfig)}
    for head, values in records.items():
        top[head] = fields[head].default_factory(**values)
    return PipelineConfig(**top)


def _setup_logging(quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("mpq_export")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False


def _main_check(argv: list[str]) -> int:
    p = _Parser(prog=f"{PROG} check", description="Check a Q/DQ ONNX model against TensorRT's quantization rules "
                "(docs/design.md); prints every offending node, exits 1 if any rule is broken.")
    p.add_argument("model", help="the Q/DQ ONNX model (e.g. out/model.mpq.onnx), or an output folder holding one")
    args = p.parse_args(argv)
    from mpq_export.targets.trt_rules import check_model

    model = _checked_model_path(args.model)
    violations = check_model(model)
    for v in violations:
        print(v)
    if violations:
        print(f"{model}: {len(violations)} TensorRT rule violation(s)", file=sys.stderr)
        return 1
    print(f"{model}: OK, no TensorRT rule violations")
    return 0


def _checked_model_path(path: str) -> str:
    """`check`'s model: the file itself, or the quantized model of an mpq-export output folder; refused when
    the report beside it says it was written for the onnxruntime target, which TensorRT's rules do not fit."""
    from mpq_export.util.output_folder import OUTPUT_MODEL

    if not os.path.isdir(path):
        _refuse_other_target(path)
        return path
    inside = os.path.join(path, OUTPUT_MODEL)
    if os.path.isfile(inside):
        _refuse_other_target(inside)
        return inside
    per_budget = sorted(d for d in os.listdir(path) if os.path.isfile(os.path.join(path, d, OUTPUT_MODEL)))
    if per_budget:
        raise MPQError(f"{path} holds one model per budget ({', '.join(per_budget)}); check one of them, e.g. "
                       f"{PROG} check {os.path.join(path, per_budget[0])}")
    raise MPQError(f"{path} is a folder without {OUTPUT_MODEL}; give the Q/DQ .onnx file to check")


def _refuse_other_target(model: str) -> None:
    import json

    try:
        with open(os.path.join(os.path.dirname(os.path.abspath(model)), "report.json")) as f:
            report = json.load(f)
        ours, target = report.get("tool") == "mpq-export", report.get("target")
    except (OSError, ValueError, AttributeError):
        return  # no readable report beside it: check the file as it is
    if ours and target in TARGETS and not get_target(target).checks_rules:
        raise MPQError(f"{model} was written for --target {target} (FP32 graph, INT4 convolutions, integer-kernel "
                       f"Q/DQ), which TensorRT's rules do not fit; quantize with --target tensorrt for TensorRT")


def _main_run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.quiet)
    model, budgets, out_dir = args.model, getattr(args, "budget", None), getattr(args, "output", None)
    if args.demo:
        if model:
            raise MPQError("--demo runs on the bundled model; drop the MODEL argument or drop --demo")
        from mpq_export.inputs.demo import demo_model

        model = demo_model()
        budgets = budgets or (get_target(getattr(args, "target", DEFAULT_TARGET)).demo_budget,)
        out_dir = out_dir if out_dir is not None else "demo.mpq"
    if not model:
        raise MPQError(f"give a model (an .onnx file or a diffusers model folder), or --demo; see {PROG} --help")
    cfg = config_from_args(args, model, budgets, out_dir)
    from mpq_export.pipeline import run_pipeline
    from mpq_export.util.stage_times import keep_large_blocks_out_of_the_heap

    keep_large_blocks_out_of_the_heap()  # the process is ours: freed weights go back to the system at once
    result = run_pipeline(cfg)
    for r in result.results:
        rep = r.report
        print(f"{r.out_dir}: {rep.achieved_bits:.3f} avg weight bits (budget {r.budget:g}, {r.allocation.method}), "
              f"noise SQNR {rep.validation.mean_sqnr_db:.2f} dB, sample PSNR {rep.validation.sample_psnr_db:.2f} dB "
              f"-> {r.out_dir}/report.md")
    if args.demo:
        print(f"sample grid (FP32 top, quantized bottom): {result.results[0].out_dir}/samples.png")
    return 0


def _terminate(signum, frame):  # SIGTERM unwinds like Ctrl-C: temporary folders are removed
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    verbose = "-v" in argv or "--verbose" in argv
    import signal
    import threading

    old_term = None
    if threading.current_thread() is threading.main_thread():
        old_term = signal.signal(signal.SIGTERM, _terminate)
    try:
        if argv and argv[0] == "check":
            return _main_check(argv[1:])
        return _main_run(argv)
    except MPQError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except SystemExit as e:  # argparse's --help and usage errors: return the code, callers may be in-process
        return e.code if isinstance(e.code, int) else 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; no output was published", file=sys.stderr)
        return 130
    except MemoryError:
        print(f"{PROG}: error: out of memory; lower --samples, --resolution or --calib-mem-mb", file=sys.stderr)
        return 1
    except OSError as e:  # disk full, permissions, ... on a path the checks above could not foresee
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"{PROG}: error: {e.strerror or e}{where}; free space or choose other paths (-o, --cache-dir)",
              file=sys.stderr)
        if verbose:
            raise
        return 1
    except Exception as e:  # the last line of defence: one line, the traceback only on request
        if verbose:
            raise
        msg = str(e).splitlines()[0][:300] if str(e) else ""
        print(f"{PROG}: error: unexpected {type(e).__name__}: {msg} (this is a bug or an unsupported model; "
              f"rerun with -v for the traceback)", file=sys.stderr)
        return 1
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)


if __name__ == "__main__":
    sys.exit(main())
