import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mpq_export.util.errors import MPQError
from mpq_export.stages.inspect import inspect_model
from mpq_export.runtime.ort import ort_session, run_model
from mpq_export.inputs.conditioning import load_conditioning


def _model(path, batch):
    """y = conv(sample) * timestep + mean(cond): checks rows stay aligned across chunks."""
    b = batch if batch else "b"
    x = helper.make_tensor_value_info("sample", TensorProto.FLOAT, [b, 1, 4, 4])
    t = helper.make_tensor_value_info("timestep", TensorProto.FLOAT, [b])
    c = helper.make_tensor_value_info("cond", TensorProto.FLOAT, [b, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [b, 1, 4, 4])
    inits = [numpy_helper.from_array(np.full((1, 1, 1, 1), 2.0, np.float32), "w"),
             numpy_helper.from_array(np.array([-1, 1, 1, 1], np.int64), "shp"),
             numpy_helper.from_array(np.array([1], np.int64), "ax")]
    nodes = [helper.make_node("Conv", ["sample", "w"], ["c1"]),
             helper.make_node("Reshape", ["timestep", "shp"], ["t4"]),
             helper.make_node("Mul", ["c1", "t4"], ["m"]),
             helper.make_node("ReduceMean", ["cond", "ax"], ["cm"], keepdims=1),
             helper.make_node("Reshape", ["cm", "shp"], ["cm4"]),
             helper.make_node("Add", ["m", "cm4"], ["y"])]
    g = helper.make_graph(nodes, "g", [x, t, c], [y], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return str(path)


def test_fixed_batch_models_run_in_chunks_with_rows_aligned(tmp_path):
    dyn = _model(tmp_path / "dyn.onnx", None)
    fixed = _model(tmp_path / "fixed.onnx", 2)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 1, 4, 4)).astype(np.float32)  # 5 rows: two chunks of 2 and a padded one
    cond = {"cond": rng.standard_normal((5, 3)).astype(np.float32)}
    out = {}
    for p in (dyn, fixed):
        info = inspect_model(p)
        (out[p],) = run_model(ort_session(p), info, ["y"], x, 7, cond)
    assert out[fixed].shape == (5, 1, 4, 4)
    np.testing.assert_allclose(out[fixed], out[dyn], rtol=1e-6)
    np.testing.assert_allclose(out[dyn], 2 * x * 7 + cond["cond"].mean(1)[:, None, None, None], rtol=1e-5)


def test_conditioning_is_cycled_from_a_file_and_errors_are_one_line(tmp_path):
    info = inspect_model(_model(tmp_path / "m.onnx", None))
    f = tmp_path / "c.npz"
    np.savez(f, cond=np.arange(6, dtype=np.float32).reshape(2, 3))
    cond, source = load_conditioning(info, str(f), 5, seed=0)
    assert source.startswith("file") and cond["cond"].shape == (5, 3)
    np.testing.assert_array_equal(cond["cond"][2], cond["cond"][0])
    cond2, source2 = load_conditioning(info, None, 4, seed=0)
    assert "standard-normal" in source2 and cond2["cond"].shape == (4, 3)
    with pytest.raises(MPQError, match="not found"):
        load_conditioning(info, str(tmp_path / "missing.npz"), 2, seed=0)


def test_a_session_that_cannot_run_says_which_inputs(tmp_path):
    p = _model(tmp_path / "m.onnx", None)
    info = inspect_model(p)
    with pytest.raises(MPQError, match="onnxruntime cannot run the model on inputs sample"):
        run_model(ort_session(p), info, ["y"], np.zeros((2, 1, 5, 5), np.float32), 3, {"cond": np.zeros((3, 3), np.float32)})
