"""fp16_graph: the tensorrt target's FP16 graph keeps FP32 IO, keeps the sensitive ops in FP32, stays
topologically ordered and computes what the FP32 graph computes to FP16 accuracy."""

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from mpq_export.targets.fp16_graph import to_fp16_graph


def _model():
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32) * 0.3, "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("Softmax", ["h"], ["s"], axis=-1),
             helper.make_node("Sin", ["t"], ["st"]),  # the timestep embedding's sin of large arguments
             helper.make_node("Add", ["s", "st"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8]),
                                       helper.make_tensor_value_info("t", TensorProto.FLOAT, [2, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _run(m, feeds):
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def test_fp16_graph_matches_fp32_and_keeps_sin_and_softmax_in_fp32():
    m = _model()
    rng = np.random.default_rng(1)
    feeds = {"x": rng.standard_normal((2, 8)).astype(np.float32),
             "t": rng.uniform(0, 1000, (2, 8)).astype(np.float32)}
    ref = _run(m, feeds)
    conv = to_fp16_graph(_model())
    onnx.checker.check_model(conv)
    assert {t.name: t.data_type for t in conv.graph.initializer}["w"] == TensorProto.FLOAT16
    assert all(v.type.tensor_type.elem_type == TensorProto.FLOAT for v in list(conv.graph.input) + list(conv.graph.output))
    out = _run(conv, feeds)
    # sin(t) for t up to 1000 is wrong in FP16 (spacing 0.5 there): FP32 keeps it within 1e-2
    assert np.abs(out - ref).max() < 1e-2
    seen = {i.name for i in conv.graph.input} | {t.name for t in conv.graph.initializer} | {""}
    for n in conv.graph.node:  # topological order, as TensorRT's parser and onnx.checker want
        assert all(i in seen for i in n.input), n.name
        seen.update(n.output)
