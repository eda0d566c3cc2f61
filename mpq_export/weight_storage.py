"""Target-specific realisation of quantized weights and of the final graph.

INT4 weights are stored packed (opset 21): per-channel for Conv (onnxruntime target only, see
targets.py), blocked along K for MatMul/Gemm. onnxruntime keeps the FP32 graph; tensorrt's graph is
converted to FP16 (see fp16_graph).
"""

from __future__ import annotations

import numpy as np

from mpq_export.allocate import Format


def _int4_constant(values: np.ndarray, name_hint: str = "int4"):
    """INT4 as a packed TensorProto behind LazyValues (gs.Constant cannot export INT4 itself)."""
    import ml_dtypes
    from onnx import numpy_helper
    from onnx_graphsurgeon.ir.tensor import LazyValues

    return LazyValues(numpy_helper.from_array(values.astype(ml_dtypes.int4), name_hint))


def weight_storage(qw, fmt: Format):
    """(constant values for gs.Constant, storage dtype name) of a quantized weight: its own width."""
    if fmt.weight_bits == 8:
        return qw.values.astype(np.int8), "int8"
    return _int4_constant(qw.values), "int4"


def finalize_for_target(model, target: str):
    """Last graph-wide step per target (FP16 conversion for TensorRT)."""
    if target == "onnxruntime":
        return model
    from mpq_export.fp16_graph import to_fp16_graph

    return to_fp16_graph(model)
