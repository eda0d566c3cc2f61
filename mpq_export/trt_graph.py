"""Target-specific realisation of quantized weights and of the final graph.

onnxruntime: INT4 weights stored as packed INT4 (Conv per-channel, MatMul/Gemm blocked), FP32 graph.
tensorrt: TensorRT has no INT4 convolution, so a 4-bit Conv weight is stored as INT8 holding the
same 4-bit values (the numbers are identical; engine storage is 8 bits and is reported so);
MatMul/Gemm INT4 stays a blocked INT4 DQ. The graph is then converted to FP16 (see fp16_graph).
"""

from __future__ import annotations

import numpy as np

from mpq_export.allocate import Format
from mpq_export.layers import QuantLayer


def _int4_constant(values: np.ndarray, name_hint: str = "int4"):
    """INT4 as a packed TensorProto behind LazyValues (gs.Constant cannot export INT4 itself)."""
    import ml_dtypes
    from onnx import numpy_helper
    from onnx_graphsurgeon.ir.tensor import LazyValues

    return LazyValues(numpy_helper.from_array(values.astype(ml_dtypes.int4), name_hint))


def weight_storage(qw, fmt: Format, layer: QuantLayer, target: str):
    """(constant values for gs.Constant, storage dtype name) of a quantized weight."""
    if fmt.weight_bits == 8:
        return qw.values.astype(np.int8), "int8"
    if target == "tensorrt" and layer.op_type in ("Conv", "ConvTranspose"):
        return qw.values.astype(np.int8), "int8"  # INT4 values in INT8 storage: no INT4 conv in TensorRT
    return _int4_constant(qw.values), "int4"


def finalize_for_target(model, target: str):
    """Last graph-wide step per target (FP16 conversion for TensorRT)."""
    if target == "onnxruntime":
        return model
    from mpq_export.fp16_graph import to_fp16_graph

    return to_fp16_graph(model)
