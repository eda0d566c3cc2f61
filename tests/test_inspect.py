import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from mpq_export.util.errors import MPQError
from mpq_export.stages.inspect import inspect_model


def test_layer_names_are_module_paths(unet_onnx):
    info = inspect_model(unet_onnx)
    names = [l.name for l in info.layers]
    assert "conv_in" in names and "conv_out" in names
    assert "down_blocks.0.resnets.0.conv1" in names
    assert "down_blocks.1.attentions.0.to_q" in names  # anonymous MatMul weight: named from the node path
    assert "time_embedding.linear_1" in names
    assert len(set(names)) == len(names)
    ops = {l.op_type for l in info.layers}
    assert ops == {"Conv", "MatMul", "Gemm"}
    # attention's activation x activation MatMuls are not layers
    assert not any(n.endswith("attentions.0") for n in names)
    assert info.sample.name == "sample" and info.timestep.name == "timestep" and info.conditioning == []
    assert info.sample_size == (16, 16)
    q = info.layer("down_blocks.1.attentions.0.to_q")
    assert q.weight_shape == (32, 32) and q.weight_axis == 1 and q.reduction_axis == 0
    g = info.layer("time_embedding.linear_1")
    assert g.op_type == "Gemm" and g.weight_axis == 0 and g.reduction_axis == 1  # transB=1: [N, K]


def test_conditional_model_inputs(cond_unet_onnx):
    info = inspect_model(cond_unet_onnx)
    assert [c.name for c in info.conditioning] == ["encoder_hidden_states"]
    assert any(l.name.endswith("attn2.to_k") for l in info.layers)  # cross-attention K/V projections


def _save(graph, path):
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(m, str(path))
    return str(path)


def test_missing_and_non_onnx_files(tmp_path):
    with pytest.raises(MPQError, match="not found"):
        inspect_model(str(tmp_path / "nope.onnx"))
    bad = tmp_path / "bad.onnx"
    bad.write_text("this is not a protobuf")
    with pytest.raises(MPQError, match="not a readable ONNX"):
        inspect_model(str(bad))


def test_no_timestep_input(tmp_path):
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])
    w = helper.make_tensor("w", TensorProto.FLOAT, [3, 3, 1, 1], [0.0] * 9)
    g = helper.make_graph([helper.make_node("Conv", ["image", "w"], ["y"])], "g", [x], [y], [w])
    with pytest.raises(MPQError, match="timestep"):
        inspect_model(_save(g, tmp_path / "m.onnx"))


def test_no_quantizable_layers(tmp_path):
    x = helper.make_tensor_value_info("sample", TensorProto.FLOAT, [1, 3, 8, 8])
    t = helper.make_tensor_value_info("timestep", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])
    g = helper.make_graph([helper.make_node("Relu", ["sample"], ["y"])], "g", [x, t], [y])
    with pytest.raises(MPQError, match="no quantizable layers"):
        inspect_model(_save(g, tmp_path / "m.onnx"))


def test_dynamo_exported_model_keeps_module_names_and_quantizes(tmp_path):
    """torch's dynamo exporter names nodes node_MatMul_161; module paths come from node metadata."""
    torch = pytest.importorskip("torch")
    import warnings

    import models
    from conftest import run_cli

    class Wrapper(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, sample, timestep):
            return self.m(sample, timestep, return_dict=False)[0]

    path = str(tmp_path / "dynamo.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Wrapper(models.tiny_unet2d()).eval(), (torch.randn(2, 1, 16, 16), torch.full((2,), 10.0)), path,
                          dynamo=True, input_names=["sample", "timestep"], output_names=["out_sample"])
    info = inspect_model(path)
    names = {l.name for l in info.layers}
    assert {"conv_in", "down_blocks.0.resnets.0.conv1", "down_blocks.1.attentions.0.to_q", "mid_block.attentions.0.to_out.0",
            "time_embedding.linear_1"} <= names
    assert not any(n.startswith("node_") for n in names)
    assert info.sample.shape[0] == 2  # this exporter fixed the batch: calibration runs in chunks of 2
    out = tmp_path / "out"
    code, _, err = run_cli(path, "--budget", "7.7", "-o", out, "--steps", "6", "--timesteps", "2",
                           "--samples", "6", "--val-samples", "4", "--no-stability")
    assert code == 0, err
    from conftest import run_cpu_check

    passed, tail = run_cpu_check(str(out), path)
    assert passed, tail


def test_unnamed_and_duplicate_nodes_get_unique_names(unet_onnx, tmp_path):
    """ONNX allows empty and repeated node names; every stage looks nodes up by name."""
    import onnx

    from mpq_export.stages.act_ranges import ActCalibSettings, choose_ranges
    from mpq_export.stages.allocate import allocate
    from mpq_export.stages.calibrate import CalibrationSettings, calibrate
    from mpq_export.formats import QuantizeSettings
    from mpq_export.stages.quantize import count_weight_bits, quantize
    from mpq_export.runtime.sampler import NoiseSchedule

    m = onnx.load(unet_onnx)
    for i, n in enumerate(m.graph.node):
        n.name = "" if i % 2 else "same"
    path = str(tmp_path / "anonymous.onnx")
    onnx.save(m, path)
    info = inspect_model(path)
    assert len({l.node_name for l in info.layers}) == len(info.layers)
    stats = calibrate(info, CalibrationSettings(steps=4, timesteps=2, samples=4), NoiseSchedule())
    alloc = allocate(info.layers, 6, "onnxruntime", theta=np.ones(len(info.layers)))
    out = str(tmp_path / "q.onnx")
    quantize(info, alloc, choose_ranges(stats.act_hist, ActCalibSettings()), out, QuantizeSettings(), "onnxruntime")
    counted, per_layer = count_weight_bits(out, info)
    assert counted == pytest.approx(alloc.achieved_bits)
    assert [per_layer[n] for n in alloc.layer_names] == [f.weight_bits for f in alloc.formats]
