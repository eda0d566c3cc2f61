"""Targets and the formats each one really runs and stores.

The budget counts stored bits, so a format is a candidate on a target only where the target keeps
its weights at the format's width. TensorRT's INT4 is weight-only with per-block scales, blocks of
64 or 128 along one of the last two dimensions (TensorRT docs, "Quantization Schemes",
docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/quantized-types-schemes.html;
"Working with Quantized Types" lists INT4 as "weight-only quantization"), so there is no INT4
convolution (also ModelOpt issue #178). A 4-bit convolution on the tensorrt target would be an
INT8 convolution holding 4-bit values: W4 quality at W8 storage and speed, dominated by w8a8, so it
is not offered. INT8 weight-only GEMM is not offered either: at the same stored 8 bits the budget
cannot tell it from w8a8, which is the one that runs INT8 tensor-core GEMMs.

onnxruntime stores INT4 (packed, opset 21) for both convolutions and GEMMs.
"""

from __future__ import annotations

from dataclasses import dataclass

from mpq_export.errors import MPQError

TARGETS = ("tensorrt", "onnxruntime")
DEFAULT_TARGET = "tensorrt"
CONV_OPS = ("Conv", "ConvTranspose")
TENSORRT_INT4_BLOCK_SIZES = (64, 128)
GEMM_OPS = ("MatMul", "Gemm")


@dataclass(frozen=True)
class Format:
    name: str  # w4a8 | w4a16 | w8a8 | fp16
    weight_bits: int  # stored bits per weight: what the budget counts
    act_bits: int | None  # 8: the layer's input gets an INT8 per-tensor Q/DQ; None: left in float

    @property
    def quantized(self) -> bool:
        return self.weight_bits < 16


FP16 = Format("fp16", 16, None)
W8A8 = Format("w8a8", 8, 8)
W4A8 = Format("w4a8", 4, 8)  # INT4 per-channel conv weights, INT8 input
W4A16 = Format("w4a16", 4, None)  # INT4 block weight-only GEMM
FORMATS = (FP16, W8A8, W4A8, W4A16)

# target -> op type -> formats it runs, cheapest first
TARGET_FORMATS: dict[str, dict[str, tuple[Format, ...]]] = {
    "tensorrt": {**{op: (W8A8, FP16) for op in CONV_OPS}, **{op: (W4A16, W8A8, FP16) for op in GEMM_OPS}},
    "onnxruntime": {**{op: (W4A8, W8A8, FP16) for op in CONV_OPS}, **{op: (W4A16, W8A8, FP16) for op in GEMM_OPS}},
}
WHY_NOT = {("tensorrt", op, 4): "TensorRT has no INT4 convolution" for op in CONV_OPS}


def check_target(target: str) -> str:
    if target not in TARGETS:
        raise MPQError(f"--target must be one of {', '.join(TARGETS)}, got '{target}'")
    return target


def formats_for(op_type: str, target: str) -> tuple[Format, ...]:
    return TARGET_FORMATS[check_target(target)][op_type]


def format_for(op_type: str, bits: int, target: str = DEFAULT_TARGET) -> Format | None:
    """The format of `op_type` with `bits` stored weight bits on `target`, or None if it has none."""
    return next((f for f in formats_for(op_type, target) if f.weight_bits == bits), None)


def parse_format(name: str) -> Format:
    for f in FORMATS:
        if f.name == name:
            return f
    raise MPQError(f"unknown format '{name}' ({', '.join(f.name for f in FORMATS)})")
