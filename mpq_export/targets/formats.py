"""Quantization formats: what a layer's weight and input become, and how many bits the weight stores.

A format belongs to no target; each target (targets/<name>.py) lists the formats it really runs and
stores per op type, since the budget counts stored bits (docs/design.md, "Formats and targets").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mpq_export.util.errors import MPQError

CONV_OPS = ("Conv", "ConvTranspose")
GEMM_OPS = ("MatMul", "Gemm")


ELEMENTS = ("int", "fp8")  # how the stored values encode numbers: integers, or FP8 E4M3 floats
FP8_MAX = 448.0  # the largest finite FP8 E4M3 value: the scale maps |max| onto it (TensorRT, "Quantization Schemes")


@dataclass(frozen=True)
class Format:
    name: str  # w4a8 | w4a16 | w8a8 | fp8 | fp16
    weight_bits: int  # stored bits per weight: what the budget counts
    act_bits: int | None  # 8: the layer's input gets an 8-bit per-tensor Q/DQ; None: left in float
    # the element type of the stored weight and of the quantized input: "int" (INT8/INT4, symmetric,
    # rounded to integers) or "fp8" (E4M3, rounded to the nearest FP8 value). Two formats of equal bits
    # (w8a8 and fp8) differ only here; the budget cannot tell them apart, the error terms can.
    element: str = "int"

    @property
    def quantized(self) -> bool:
        return self.weight_bits < 16

    @property
    def int8_input(self) -> bool:
        """The layer's input goes through an INT8 Q/DQ (what TensorRT's residual-Add fusion looks for)."""
        return self.act_bits == 8 and self.element == "int"


FP16 = Format("fp16", 16, None)
W8A8 = Format("w8a8", 8, 8)
W4A8 = Format("w4a8", 4, 8)  # INT4 per-channel conv weights, INT8 input
W4A16 = Format("w4a16", 4, None)  # INT4 block weight-only GEMM
FP8 = Format("fp8", 8, 8, "fp8")  # FP8 E4M3 per-channel weights, FP8 E4M3 per-tensor input
FORMATS = (FP16, W8A8, W4A8, W4A16, FP8)


def parse_format(name: str) -> Format:
    for f in FORMATS:
        if f.name == name:
            return f
    raise MPQError(f"unknown format '{name}' ({', '.join(f.name for f in FORMATS)})")


def int4_constant(values: np.ndarray, name_hint: str = "int4"):
    """INT4 as a packed TensorProto behind LazyValues: gs.Constant cannot export INT4 itself, and
    onnx.helper.make_tensor would store Python ints in int32_data (8x the file size)."""
    import ml_dtypes
    from onnx import numpy_helper
    from onnx_graphsurgeon.ir.tensor import LazyValues

    return LazyValues(numpy_helper.from_array(values.astype(ml_dtypes.int4), name_hint))


def fp8_constant(values: np.ndarray, name_hint: str = "fp8"):
    """FP8 E4M3 values (already on its grid) as a TensorProto behind LazyValues, one byte each."""
    import ml_dtypes
    from onnx import numpy_helper
    from onnx_graphsurgeon.ir.tensor import LazyValues

    return LazyValues(numpy_helper.from_array(np.asarray(values, np.float32).astype(ml_dtypes.float8_e4m3fn), name_hint))


def to_fp8(x: np.ndarray) -> np.ndarray:
    """x rounded to the nearest FP8 E4M3 value, ties to even, saturated at +-448 as TensorRT's and ONNX's
    QuantizeLinear do (ml_dtypes' cast itself would give NaN past 448), as float32."""
    import ml_dtypes

    return np.clip(np.asarray(x, np.float32), -FP8_MAX, FP8_MAX).astype(ml_dtypes.float8_e4m3fn).astype(np.float32)


def stored_weight(values: np.ndarray, fmt: Format):
    """(constant values for gs.Constant, storage dtype name) of a quantized weight, at its own width."""
    if fmt.element == "fp8":
        return fp8_constant(values), "fp8"
    if fmt.weight_bits == 8:
        return values.astype(np.int8), "int8"
    return int4_constant(values), "int4"
