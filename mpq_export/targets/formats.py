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


def stored_weight(values: np.ndarray, fmt: Format):
    """(constant values for gs.Constant, storage dtype name) of a quantized weight, at its own width."""
    if fmt.weight_bits == 8:
        return values.astype(np.int8), "int8"
    return int4_constant(values), "int4"
