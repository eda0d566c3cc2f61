"""Target `tensorrt`: an FP16 graph with the Q/DQ that TensorRT builds (strongly typed, 10.12+ and 11.x).

Formats: the budget counts stored bits, so a format is offered only where TensorRT keeps weights at
its width. TensorRT's INT4 is weight-only with per-block scales, blocks of 64 or 128 along one of the
last two dimensions (TensorRT docs, "Quantization Schemes"; "Working with Quantized Types" lists INT4 as
"weight-only quantization"), so there is no INT4 convolution (also ModelOpt issue #178): a 4-bit conv
would be an INT8 conv holding 4-bit values, W4 quality at W8 storage, dominated by w8a8. INT8
weight-only GEMM is not offered either: at the same stored 8 bits the budget cannot tell it from w8a8,
which runs INT8 tensor-core GEMMs.

Graph rules (docs/design.md, "Formats and targets"): symmetric INT8 activations with zero point 0, one
shared Q/DQ pair per activation, both inputs of a residual Add quantized when it feeds an INT8-input
conv (TensorRT fuses the Add into the conv only then), the graph in FP16 with FP16 scales (TensorRT 11
has no FP16/INT8 builder flags: precision comes from the graph).
"""

from __future__ import annotations

from mpq_export.core.choices import Switch
from mpq_export.targets.base import Target
from mpq_export.formats import CONV_OPS, FP16, GEMM_OPS, LOW_RANK_LADDER, W4A16, W8A8, W8A8_SQ
from mpq_export.targets.gpus import AMPERE, GpuFamily, resolve
from mpq_export.util.errors import MPQError

INT4_BLOCK_SIZES = (64, 128)
# the formats every supported GPU runs; a GPU family adds its own (targets/gpus.py: FP8 from Ada on)
# GEMMs: INT4 weight-only, INT4 with a low-rank FP16 branch (plain FP16 MatMuls beside it), INT8 and
# smoothed INT8 (an FP16 Mul before the input's quantize)
BASE_FORMATS = {**{op: (W8A8, FP16) for op in CONV_OPS},
                **{op: (W4A16, *LOW_RANK_LADDER, W8A8, W8A8_SQ, FP16) for op in GEMM_OPS}}


class TensorRTTarget(Target):
    name = "tensorrt"
    help = "FP16 graph + Q/DQ TensorRT builds (INT8 convs, INT4 weight-only GEMMs; FP8 with --gpu ada/hopper/blackwell)"
    why_not = {(op, 4): "TensorRT has no INT4 convolution" for op in CONV_OPS}
    # convolutions store >= 8 bits here: the floor of a conv-heavy UNet sits above 7 bits
    demo_budget = 7.5
    quantize_residual_adds = True
    builds_engines = True
    handoffs = ("trt-demo",)  # TensorRT's demo/Diffusion (handoffs/)
    checks_rules = True
    compare_with = "onnxruntime"

    def __init__(self, gpu: GpuFamily = AMPERE, gpu_reason: str | None = None):
        self.gpu, self.gpu_reason = gpu, gpu_reason
        # the family's formats go before FP16, after the base formats of the same width: cheapest first
        self.formats = {op: tuple(f for f in fmts if f.quantized) + gpu.adds.get(op, ()) + (FP16,)
                        for op, fmts in BASE_FORMATS.items()}

    def for_gpu(self, choice: str) -> "TensorRTTarget":
        if choice == "auto" and self.gpu_reason is not None:  # already chosen (a Target passed in by a caller)
            return self
        return TensorRTTarget(*resolve(choice))

    def check_quantize_settings(self, settings) -> None:
        if settings.block_size not in INT4_BLOCK_SIZES:
            raise MPQError(f"--block-size {settings.block_size} cannot be built by TensorRT (INT4 blocks of "
                           f"{' or '.join(map(str, INT4_BLOCK_SIZES))}); use one of those or --target onnxruntime")
        if settings.reduce_range is Switch.YES:
            raise MPQError("--reduce-range works around onnxruntime's x86 integer GEMM (this run: --target tensorrt, "
                           "whose INT8 GEMMs take the full range); add --target onnxruntime or drop it")
        if not settings.integer_conv:
            raise MPQError("--float-conv-outputs changes the onnxruntime target's graph (this run: --target "
                           "tensorrt, where TensorRT chooses its own fusions); add --target onnxruntime or drop it")

    def check_activation_ranges(self, info, observed_max: dict[str, float]) -> None:
        """The graph is FP16: an activation past 65504 becomes inf in the engine (and NaN after it)."""
        from mpq_export.targets.fp16_graph import FP16_MAX

        big = {t: v for t, v in observed_max.items() if v > FP16_MAX}
        if big:
            tensor = max(big, key=big.get)
            layers = [l.name for l in info.layers if l.activation_input in big or l.output in big]
            raise MPQError(f"{len(big)} activation(s) exceed FP16's range during calibration (largest: '{tensor}', "
                           f"|x| = {big[tensor]:.3g} > {FP16_MAX:g}; layers {', '.join(layers[:4]) or 'none'}): the "
                           f"tensorrt target's graph is FP16; use --target onnxruntime (an FP32 graph)")

    def float_graph(self, model):
        from mpq_export.targets.fp16_graph import to_fp16_graph

        return to_fp16_graph(model)

    def finalize(self, model):
        return self.float_graph(model)

    def check_graph(self, path: str) -> str | None:
        from mpq_export.targets.trt_rules import check_model

        violations = check_model(path)
        if violations:
            raise MPQError(f"internal: the TensorRT graph breaks {len(violations)} rule(s), first: {violations[0]}")
        return "passed: no TensorRT rule violations (mpq-export check)"
