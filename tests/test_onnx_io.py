"""onnx_io: the graph helpers every stage shares."""

import random

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mpq_export.util.onnx_io import (consumers_of, external_data_problem, opset_of, producers_of, toposort_nodes,
                                   weight_axes, weights_nbytes)


def _chain(n=6):
    nodes = [helper.make_node("Relu", [f"t{i}"], [f"t{i + 1}"], name=f"n{i}") for i in range(n)]
    nodes.append(helper.make_node("Add", ["t0", f"t{n}"], ["y"], name="add"))
    return nodes


def test_producers_and_consumers():
    g = helper.make_graph(_chain(3), "g", [], [])
    prod, cons = producers_of(g), consumers_of(g)
    assert prod["t2"].name == "n1" and "t0" not in prod
    assert [n.name for n in cons["t0"]] == ["n0", "add"]


def test_toposort_restores_order_and_refuses_what_it_cannot_order():
    nodes = _chain()
    shuffled = nodes[:]
    random.Random(0).shuffle(shuffled)
    ordered = toposort_nodes(shuffled, {"t0"})
    assert [n.name for n in ordered] == [n.name for n in nodes]
    assert toposort_nodes(nodes, set()) is None  # t0 is never produced


def test_weight_axes_per_op():
    gemm_t = helper.make_node("Gemm", ["a", "b"], ["c"], transB=1)
    gemm = helper.make_node("Gemm", ["a", "b"], ["c"])
    assert weight_axes("Conv", None, 4) == (0, -1)
    assert weight_axes("ConvTranspose", None, 4) == (1, -1)
    assert weight_axes("MatMul", None, 2) == (1, 0)  # [K, N]
    assert weight_axes("Gemm", gemm_t, 2) == (0, 1) and weight_axes("Gemm", gemm, 2) == (1, 0)


def _model_with_weight(n=1000):
    w = numpy_helper.from_array(np.ones(n, np.float32), "w")
    g = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n])], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_weight_bytes_are_counted_without_serialising():
    m = _model_with_weight()
    assert opset_of(m) == 17
    assert weights_nbytes(m) == 4000
    m.graph.node.append(helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.ones(10, np.float32))))
    assert weights_nbytes(m) == 4040  # Constant nodes count too


def test_external_data_problems_name_the_file(tmp_path):
    onnx.save(_model_with_weight(), str(tmp_path / "m.onnx"), save_as_external_data=True, location="m.data",
              size_threshold=0)
    m = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
    assert external_data_problem(m, str(tmp_path)) is None
    data = tmp_path / "m.data"
    data.write_bytes(data.read_bytes()[:100])
    assert "truncated" in external_data_problem(m, str(tmp_path))
    data.unlink()
    assert "m.data, which is missing" in external_data_problem(m, str(tmp_path))


def test_external_tensors_are_read_without_touching_the_proto(tmp_path):
    from mpq_export.util.onnx_io import read_external_tensor

    onnx.save(_model_with_weight(10), str(tmp_path / "m.onnx"), save_as_external_data=True, location="m.data",
              size_threshold=0)
    m = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
    t = m.graph.initializer[0]
    assert np.array_equal(read_external_tensor(t, str(tmp_path)), np.ones(10, np.float32))
    assert not t.raw_data  # the model still holds no weight bytes


def test_shape_inference_without_weights_types_every_tensor():
    from mpq_export.util.onnx_io import infer_shapes_without_weights

    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Reshape", ["h", "shape"], ["y"]),
             helper.make_node("Relu", ["y"], ["z"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 1000])],
                          [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(np.ones((1000, 8), np.float32), "w"),  # large: shape only
                           numpy_helper.from_array(np.array([4, 4], np.int64), "shape")])  # small: its values
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    infer_shapes_without_weights(m)
    vi = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in m.graph.value_info}
    assert vi["h"] == [2, 8] and vi["y"] == [4, 4]
    assert [i.name for i in m.graph.input] == ["x"]  # the model itself is unchanged but for value_info


def test_constant_nodes_stored_externally_travel_with_an_edited_graph(tmp_path):
    """torch writes every tensor over 1 KB of a > 2 GB model to a file of its own, Constant nodes' values
    included (SD3's LayerNorm ones): a graph loaded for editing without its weights and saved elsewhere must
    carry those values, not name files that are not beside it."""
    from mpq_export.util.onnx_io import load_for_edit, save_model

    ones = numpy_helper.from_array(np.ones(512, np.float32), "ln_scale")
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((512, 8)).astype(np.float32), "w")
    g = helper.make_graph(
        [helper.make_node("Constant", [], ["scale"], value=ones, name="const"),
         helper.make_node("Mul", ["x", "scale"], ["y"], name="mul"), helper.make_node("MatMul", ["y", "w"], ["z"], name="mm")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 512])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 8])], [w])
    src = tmp_path / "src"
    src.mkdir()
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    const = m.graph.node[0].attribute[0].t  # its value in a file of its own, as torch writes it
    (src / "ln_scale").write_bytes(const.raw_data)
    onnx.external_data_helper.set_external_data(const, location="ln_scale")
    const.data_location = TensorProto.EXTERNAL
    const.ClearField("raw_data")
    onnx.save(m, str(src / "m.onnx"), save_as_external_data=True, all_tensors_to_one_file=False, size_threshold=0)
    model = load_for_edit(str(src / "m.onnx"), load_weights=False)
    const = next(n for n in model.graph.node if n.op_type == "Constant").attribute[0].t
    assert not onnx.external_data_helper.uses_external_data(const)
    np.testing.assert_array_equal(numpy_helper.to_array(const), np.ones(512, np.float32))
    out = tmp_path / "out"
    out.mkdir()
    onnx.external_data_helper.load_external_data_for_model(model, str(src))  # the weights, as quantize writes them
    save_model(model, str(out / "m.onnx"))
    onnx.checker.check_model(str(out / "m.onnx"), full_check=True)
