"""`QuantizeSettings`: how weights are quantized (block size, clip search, rounding) and the graph options
of the targets that honour them. One record, checked field by field here and against the chosen target
by the target itself (`Target.check_quantize_settings`), so the CLI and Python callers get one refusal.
"""

from __future__ import annotations

from dataclasses import dataclass

from mpq_export.core.choices import Switch
from mpq_export.formats.gptq import DEFAULT_ROUNDING, ROUNDINGS
from mpq_export.util.errors import MPQError


@dataclass(frozen=True)
class QuantizeSettings:
    block_size: int = 128  # INT4 block along K for MatMul/Gemm weights
    clip_search: bool = True  # MSE clipping search for weight scales (False: plain |max|)
    clip_grid: int = 20  # candidate clip ratios in [0.5, 1]
    rounding: str = DEFAULT_ROUNDING  # nearest | gptq (needs calibration's input statistics; formats/gptq.py)
    # onnxruntime target: quantize the output of each INT8-input convolution (w8a8, w4a8) too, so that
    # onnxruntime's CPU provider fuses DQ -> Conv -> Q into QLinearConv (targets/onnxruntime.py); it
    # costs accuracy (docs/quality.md, "onnxruntime's integer convolutions"); False: --float-conv-outputs
    integer_conv: bool = True
    # onnxruntime target: the INT8 weights of W8A8 MatMul/Gemm layers in [-63, 63] (onnxruntime's
    # reduce_range). Its integer GEMM on x86 CPUs without VNNI sums u8 x s8 pairs in 16 bits, which
    # full-range weights can saturate (measured in docs/quality.md, "digits-dit"); the file still stores
    # INT8, so the budget counts 8 bits. auto: the target decides from the CPU the run sees
    # (Target.resolve_quantize_settings). --reduce-range
    reduce_range: Switch | bool | str = Switch.AUTO
    # tensorrt target on an FP8 GPU: FP8 Q/DQ on both inputs of attention's activation x activation
    # MatMuls (Q K^T and P V), which TensorRT fuses into its FP8 attention (ModelOpt's quantize_mha);
    # the Softmax output's scale is 1 / 448 (its max is 1), Q, K and V's their observed max / 448.
    # Off by default (docs/quality.md measures it). --fp8-attention
    fp8_attention: bool = False

    def __post_init__(self):
        object.__setattr__(self, "reduce_range", Switch.of(self.reduce_range, "--reduce-range"))
        if self.rounding not in ROUNDINGS:
            raise MPQError(f"--weight-rounding must be one of {', '.join(ROUNDINGS)}, got '{self.rounding}'")
        if self.block_size < 2 or self.block_size % 2:
            raise MPQError(f"--block-size must be an even number >= 2, got {self.block_size}")
