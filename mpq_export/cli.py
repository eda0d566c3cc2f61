"""The `mpq-export` command: a thin argparse layer over mpq_export.pipeline.run_pipeline.

    mpq-export MODEL --budget B [-o DIR] ...         quantize (ONNX file or diffusers UNet folder)
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

from mpq_export import __version__
from mpq_export.stages.act_ranges import ACT_CALIB_METHODS
from mpq_export.util.errors import MPQError
from mpq_export.stages.rounding import ROUNDINGS
from mpq_export.targets import DEFAULT_TARGET, TARGETS, all_targets, get_target

PROG = "mpq-export"


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not usage + message
        self.exit(2, f"{PROG}: error: {message} (see {self.prog} --help)\n")


def _floats(text: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or a comma list of numbers, got '{text}'") from None
    if not vals:
        raise argparse.ArgumentTypeError("expected at least one number")
    return vals


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of integers, got '{text}'") from None


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


def _default(cls, name: str):
    """A settings dataclass's default for `name`: the library is the one source of defaults."""
    import dataclasses

    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


class _DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" only where it tells something: not for flags, unset options, or help that
    already states its default."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, [], argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    # settings classes and choice lists come from the library (numpy-only modules: --help stays light)
    from mpq_export.stages.act_ranges import DEFAULT_PERCENTILE, ActCalibSettings
    from mpq_export.stages.allocate import METHODS, AllocationSettings
    from mpq_export.stages.calibrate import CalibrationSettings
    from mpq_export.stages.orm import AGGREGATIONS, ESTIMATORS, OrmSettings
    from mpq_export.config import BUILD_MODES, IMPORTANCES, PipelineConfig
    from mpq_export.stages.quantize import QuantizeSettings
    from mpq_export.runtime.ort import DEVICES, RuntimeSettings
    from mpq_export.stages.validate import ValidationSettings

    C, Q, O, A = CalibrationSettings, QuantizeSettings, OrmSettings, AllocationSettings
    p = _Parser(prog=PROG, description="Mixed-precision INT4/INT8 Q/DQ export of a diffusion UNet (MPQ-Diff).",
                formatter_class=_DefaultsHelpFormatter,
                epilog=f"Also: '{PROG} check MODEL.onnx' checks a Q/DQ model against TensorRT's rules.")
    p.add_argument("model", nargs="?", help="FP32 ONNX UNet (inputs sample, timestep[, encoder_hidden_states]), "
                   "a diffusers UNet folder (config.json + weights), or a diffusers text-to-image pipeline folder "
                   "(model_index.json, unet/, scheduler/, text_encoder/, tokenizer/[, vae/]): calibrated on "
                   "prompts with classifier-free guidance")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--demo", action="store_true", help="run on the bundled trained digits DDPM (needs the [torch] extra)")
    p.add_argument("--budget", type=_floats, default=None,
                   help="average stored weight bits (FP16 counts 16); a comma list gives one output per budget. "
                        "A budget the model cannot reach on the target is refused with the reachable range. "
                        "With --demo: " + ", ".join(f"{t.demo_budget:g} on {t.name}" for t in all_targets()))
    p.add_argument("-o", "--output", help="output folder (default ./<model>.mpq)")
    p.add_argument("--target", choices=TARGETS, default=DEFAULT_TARGET,
                   help="; ".join(f"{t.name}: {t.help}" for t in all_targets()))
    g = p.add_argument_group("allocation")
    g.add_argument("--allocation", choices=METHODS, default=_default(A, "method"),
                   help="mpq: the 0/1 program over the importance scores; others are baselines")
    g.add_argument("--importance", choices=IMPORTANCES, default=_default(PipelineConfig, "importance"),
                   help="orm: the paper's orthogonality metric; sensitivity: measured per-layer noise-prediction "
                        "error at the profiled steps; trajectory: measured per-layer final-sample error (about 10x "
                        "sensitivity's forwards; small models)")
    g.add_argument("--bits", type=_ints, default=_default(A, "bits"), help="candidate weight bit-widths (4, 8, 16)")
    g.add_argument("--keep-fp16", action="append", default=[], metavar="REGEX",
                   help="pin matching layers to FP16 (repeatable; conv_in and conv_out always, unless --no-default-pins)")
    g.add_argument("--min8", action="append", default=None, metavar="REGEX",
                   help="hold matching layers at >= 8 bits (repeatable; default: time_embedding.*, and conv_in/conv_out "
                        "when they are not FP16)")
    g.add_argument("--no-default-pins", action="store_true",
                   help="drop the default pins (conv_in and conv_out FP16; time_embedding >= 8 bits)")
    g.add_argument("--seed", type=int, default=None, help="seed of --allocation random (default: 0)")
    o = p.add_argument_group("ORM importance")
    o.add_argument("--orm-estimator", choices=ESTIMATORS, default=_default(O, "estimator"),
                   help="linear-CKA estimator: unbiased HSIC (default, see docs/quality.md) or OMPQ's biased one")
    o.add_argument("--alpha", type=float, default=_default(O, "alpha"), help="timestep weight w_t = exp(-alpha t / T)")
    o.add_argument("--beta", type=float, default=None, help="theta = exp(-beta gamma); default 1/std(gamma)")
    o.add_argument("--agg", choices=AGGREGATIONS, default=_default(O, "agg"), help="aggregation over timesteps")
    c = p.add_argument_group("calibration")
    c.add_argument("--steps", type=int, default=_default(C, "steps"), help="DDIM steps of the sampling trajectory")
    c.add_argument("--timesteps", type=int, default=_default(C, "timesteps"), help="profiled steps K, evenly spaced")
    c.add_argument("--samples", type=int, default=_default(C, "samples"), help="samples N per profiled step")
    c.add_argument("--calib-seed", type=int, default=_default(C, "seed"), help="seed of the calibration samples")
    c.add_argument("--resolution", type=_resolution, default=None, help="sample H or HxW when the model does not fix it")
    c.add_argument("--seq-len", type=int, default=None, help="encoder_hidden_states length when dynamic")
    c.add_argument("--calib-data", default=None, metavar="FILE.npz",
                   help="conditioning inputs (arrays named like the model inputs; with guidance also uncond_<name>)")
    c.add_argument("--prompts", default=None, metavar="FILE",
                   help="pipeline folders: calibration prompts, one per line (default: the bundled prompt set)")
    c.add_argument("--guidance-scale", type=float, default=_default(C, "guidance_scale"),
                   help="classifier-free guidance of the calibration and validation sampler (1: none; "
                        "default: 7.5 for SD 1.x/2.x pipeline folders, else 1)")
    c.add_argument("--scheduler-config", default=None, help="diffusers scheduler_config.json (default: found beside a diffusers folder)")
    c.add_argument("--sample-name", default=None, help="name of the noisy-sample input (default: detected)")
    c.add_argument("--timestep-name", default=None, help="name of the timestep input (default: detected)")
    c.add_argument("--cache-dir", default=None, help="calibration cache (default $MPQ_EXPORT_CACHE or ~/.cache/mpq-export)")
    c.add_argument("--no-cache", action="store_true", help="neither read nor write the calibration cache")
    c.add_argument("--act-calib", choices=ACT_CALIB_METHODS, default=_default(ActCalibSettings, "method"),
                   help="how each INT8 activation threshold is chosen from the calibration histograms (docs/quality.md)")
    c.add_argument("--act-percentile", type=float, default=None,
                   help=f"percentile of |x| for --act-calib percentile (default: {DEFAULT_PERCENTILE})")
    c.add_argument("--calib-mem-mb", type=int, default=_default(C, "mem_budget_mb"),
                   help="tensors fetched per onnxruntime call (MB): bounds the rows per call")
    c.add_argument("--gram-mem-mb", type=int, default=_default(C, "gram_mem_mb"),
                   help="exact ORM Grams while one step's layer outputs over all rows fit in this (MB); else sketched")
    c.add_argument("--sketch-dim", type=int, default=_default(C, "sketch_dim"),
                   help="dimensions of each output row's sketch when the Grams are sketched")
    v = p.add_argument_group("quantization, engine, validation")
    v.add_argument("--block-size", type=int, default=_default(Q, "block_size"), help="INT4 block size along K for MatMul/Gemm weights")
    v.add_argument("--weight-rounding", choices=ROUNDINGS, default=_default(Q, "rounding"),
                   help="nearest: round-to-nearest; gptq: GPTQ on the layers' calibration inputs (docs/quality.md)")
    v.add_argument("--float-conv-outputs", action="store_true",
                   help="onnxruntime target: leave W8A8 convolution outputs in float (a little more accurate; "
                        "onnxruntime then runs float convolutions instead of QLinearConv, docs/speed.md)")
    v.add_argument("--no-clip-search", action="store_true", help="plain |max| weight scales instead of the MSE clip search")
    v.add_argument("--build-engine", choices=BUILD_MODES, default=_default(PipelineConfig, "build_engine"),
                   help="build a TensorRT engine (auto: when TensorRT and a GPU are present)")
    v.add_argument("--val-samples", type=int, default=_default(ValidationSettings, "samples"), help="held-back samples for validation")
    v.add_argument("--no-stability", action="store_true", help="skip the allocation-stability study in the report")
    v.add_argument("--no-act-costs", action="store_true",
                   help="skip measuring each activation quantizer alone for the report (one forward per tensor and step)")
    v.add_argument("--threads", type=int, default=_default(RuntimeSettings, "threads"),
                   help="onnxruntime threads (0: all cores)")
    v.add_argument("--device", choices=DEVICES, default=_default(RuntimeSettings, "device"),
                   help="where calibration and validation run: cuda uses onnxruntime's CUDA provider (onnxruntime-gpu)")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    p.add_argument("-v", "--verbose", action="store_true", help="on an unexpected failure, print the Python traceback")
    return p


def config_from_args(args):
    """PipelineConfig from parsed arguments; every check between options is the library's (config.py)."""
    from mpq_export.config import PipelineConfig
    from mpq_export.runtime.ort import RuntimeSettings
    from mpq_export.stages.act_ranges import ActCalibSettings
    from mpq_export.stages.allocate import AllocationSettings
    from mpq_export.stages.calibrate import CalibrationSettings
    from mpq_export.stages.orm import OrmSettings
    from mpq_export.stages.quantize import QuantizeSettings
    from mpq_export.stages.validate import ValidationSettings

    return PipelineConfig(
        model=args.model, budgets=args.budget, out_dir=args.output, target=args.target,
        allocation=AllocationSettings(bits=args.bits, method=args.allocation, seed=args.seed,
                                      keep_fp16=tuple(args.keep_fp16), min8=None if args.min8 is None else tuple(args.min8),
                                      default_pins=not args.no_default_pins),
        importance=args.importance,
        orm=OrmSettings(estimator=args.orm_estimator, alpha=args.alpha, beta=args.beta, agg=args.agg),
        calibration=CalibrationSettings(steps=args.steps, timesteps=args.timesteps, samples=args.samples,
                                        seed=args.calib_seed, resolution=args.resolution, seq_len=args.seq_len,
                                        mem_budget_mb=args.calib_mem_mb, guidance_scale=args.guidance_scale,
                                        sketch_dim=args.sketch_dim, gram_mem_mb=args.gram_mem_mb),
        act_calib=ActCalibSettings(method=args.act_calib, percentile=args.act_percentile),
        validation=ValidationSettings(samples=args.val_samples),
        quantize=QuantizeSettings(block_size=args.block_size, clip_search=not args.no_clip_search,
                                  rounding=args.weight_rounding, integer_conv=not args.float_conv_outputs),
        runtime=RuntimeSettings(threads=args.threads, device=args.device),
        calib_data=args.calib_data, prompts=args.prompts, scheduler_config=args.scheduler_config,
        cache_dir="" if args.no_cache else args.cache_dir, sample_name=args.sample_name,
        timestep_name=args.timestep_name, build_engine=args.build_engine, stability=not args.no_stability,
        act_costs=not args.no_act_costs)


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
    if args.demo:
        if args.model:
            raise MPQError("--demo runs on the bundled model; drop the MODEL argument or drop --demo")
        from mpq_export.inputs.demo import demo_model

        args.model = demo_model()
        if args.budget is None:
            args.budget = (get_target(args.target).demo_budget,)
        if args.output is None:
            args.output = "demo.mpq"
    if not args.model:
        raise MPQError(f"give a model (an .onnx file or a diffusers UNet folder), or --demo; see {PROG} --help")
    if args.budget is None:
        raise MPQError("give --budget B, the average stored weight bits to aim for (e.g. 8 for W8A8 on tensorrt, "
                       "4.5 on onnxruntime); an unreachable budget is answered with the model's range")
    cfg = config_from_args(args)
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
