"""weight_storage: quantized weights are written at their own width (INT4 packed, two per byte) and
the tensorrt target's graph becomes FP16."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mpq_export.quantize import QuantizedWeight
from mpq_export.targets import W4A8, W4A16, W8A8
from mpq_export.weight_storage import finalize_for_target, weight_storage


def _qw(values):
    return QuantizedWeight(values=values, scale=np.ones(values.shape[0], np.float32), axis=0, block_size=None)


def test_int8_weights_are_stored_as_int8():
    v = np.arange(-8, 8, dtype=np.int64).reshape(4, 4)
    stored, dtype = weight_storage(_qw(v), W8A8)
    assert dtype == "int8" and stored.dtype == np.int8 and np.array_equal(stored, v)


def test_int4_weights_are_packed_and_round_trip_with_an_odd_count():
    rng = np.random.default_rng(0)
    v = rng.integers(-8, 8, size=(3, 5))  # 15 values: the last byte holds one nibble
    for fmt in (W4A8, W4A16):
        stored, dtype = weight_storage(_qw(v), fmt)
        tensor = stored.tensor
        assert dtype == "int4" and tensor.data_type == TensorProto.INT4
        assert len(tensor.raw_data) == 8  # ceil(15 / 2) bytes: 4 bits per weight in the file
        assert np.array_equal(numpy_helper.to_array(tensor).astype(np.int8), v)


def _matmul_model():
    w = numpy_helper.from_array(np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])


def test_finalize_keeps_the_fp32_graph_for_onnxruntime_and_converts_it_for_tensorrt():
    m = _matmul_model()
    assert finalize_for_target(m, "onnxruntime") is m
    fp16 = finalize_for_target(_matmul_model(), "tensorrt")
    assert {t.name: t.data_type for t in fp16.graph.initializer}["w"] == TensorProto.FLOAT16
    assert fp16.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # IO stays FP32
    onnx.checker.check_model(fp16)
