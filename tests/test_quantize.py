import numpy as np
import onnx
import pytest

from mpq_export.stages.act_ranges import ActCalibSettings, choose_ranges
from mpq_export.stages.allocate import AllocationSettings, allocate
from mpq_export.stages.inspect import inspect_model
from mpq_export.formats import QuantizeSettings
from mpq_export.stages.quantize import count_weight_bits, quantize


def test_qdq_graph_follows_the_allocation(calibrated, tmp_path):
    info, stats = calibrated
    theta = np.linspace(0.1, 1, len(info.layers))
    alloc = allocate(info.layers, 5.0, "onnxruntime", theta=theta)
    out = str(tmp_path / "q.onnx")
    ranges = choose_ranges(stats.act_hist, ActCalibSettings())
    qm = quantize(info, alloc, ranges, out, QuantizeSettings(), "onnxruntime")
    counted, per_layer = count_weight_bits(out, info)
    assert counted == pytest.approx(alloc.achieved_bits, abs=1e-12)
    assert all(per_layer[n] == b / p for n, b, p in zip(alloc.layer_names, alloc.layer_bits, alloc.params))
    m = onnx.load(out)
    assert m.opset_import[0].version == 21 and m.ir_version >= 10
    inits = {i.name: i for i in m.graph.initializer}
    consumers = {}
    for node in m.graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    for node in m.graph.node:
        if node.op_type == "QuantizeLinear":
            # onnxruntime's integer kernels take UINT8: zero point 128 is the symmetric INT8 grid
            zp = onnx.numpy_helper.to_array(inits[node.input[2]])
            assert zp.dtype == np.uint8 and zp.item() == 128
            assert onnx.numpy_helper.to_array(inits[node.input[1]]).size == 1  # per-tensor activations
        users = consumers.get(node.output[0], [])
        if node.op_type == "DequantizeLinear" and any(u.op_type in ("Conv", "MatMul", "Gemm") for u in users):
            assert len(users) == 1  # one DQ per quantized layer, as onnxruntime's fusions want
    n_int4 = sum(i.data_type == onnx.TensorProto.INT4 for i in m.graph.initializer)
    assert n_int4 == sum(f.weight_bits == 4 for f in alloc.formats)
    assert all(v.weight_sqnr_db > 10 for v in qm.layer_storage.values() if v.weight_sqnr_db is not None)


def _optimised_ops(path, tmp_path) -> list[str]:
    """The op types onnxruntime's CPU provider runs after its graph optimisations."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED  # no hardware layouts
    ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node]


@pytest.mark.parametrize("integer_conv", [True, False])
def test_onnxruntime_runs_the_quantized_layers_on_integer_kernels(calibrated, tmp_path, integer_conv):
    """Every quantized conv (INT8 and INT4 weights) becomes QLinearConv; INT4 GEMMs become MatMulNBits;
    with integer_conv off no QLinearConv appears (the float-output form)."""
    info, stats = calibrated
    conv_idx = [i for i, l in enumerate(info.layers) if l.op_type == "Conv"]
    # MatMuls least important, so that some get INT4 (onnxruntime's MatMulNBits fusion takes MatMul, not Gemm)
    theta = np.where([l.op_type == "MatMul" for l in info.layers], 0.01, np.linspace(0.1, 1, len(info.layers)))
    alloc = allocate(info.layers, 6.0, "onnxruntime", AllocationSettings(keep_fp16=(), min8=()), theta=theta)
    q_conv = [i for i in conv_idx if alloc.formats[i].quantized]
    assert {alloc.formats[i].weight_bits for i in q_conv} == {4, 8}, "the test wants both conv widths"
    w4_gemm = sum(f.weight_bits == 4 for l, f in zip(info.layers, alloc.formats) if l.op_type == "MatMul")
    assert w4_gemm > 0, "the test wants INT4 MatMuls"
    out = str(tmp_path / "q.onnx")
    ranges = choose_ranges(stats.act_hist, ActCalibSettings())
    quantize(info, alloc, ranges, out, QuantizeSettings(integer_conv=integer_conv, block_size=16), "onnxruntime")
    assert count_weight_bits(out, info)[0] == pytest.approx(alloc.achieved_bits, abs=1e-12)  # Cast-widened INT4 counts 4
    ops = _optimised_ops(out, tmp_path)
    assert ops.count("QLinearConv") == (len(q_conv) if integer_conv else 0)
    assert ops.count("MatMulNBits") == w4_gemm
    float_convs = sum(f.quantized is False for i, f in enumerate(alloc.formats) if i in conv_idx)
    assert ops.count("Conv") + ops.count("FusedConv") == float_convs + (0 if integer_conv else len(q_conv))


@pytest.mark.parametrize("rounding", ["nearest", "gptq"])
def test_reduce_range_keeps_w8a8_gemm_weights_within_63_and_counts_8_bits(calibrated, tmp_path, rounding):
    """--reduce-range (onnxruntime's x86 integer GEMM): W8A8 MatMul/Gemm integers in [-63, 63], still INT8 in
    the file; convolutions keep the full range."""
    info, stats = calibrated
    alloc = allocate(info.layers, 8, "onnxruntime", AllocationSettings(method="uniform", keep_fp16=(), min8=()))
    amax = choose_ranges(stats.act_hist, ActCalibSettings())
    peak = {}
    for reduce in (False, True):
        out = str(tmp_path / f"r{reduce}.onnx")
        quantize(info, alloc, amax, out, QuantizeSettings(rounding=rounding, reduce_range=reduce), "onnxruntime",
                 stats=stats)
        assert count_weight_bits(out, info)[0] == pytest.approx(alloc.achieved_bits, abs=1e-12)  # INT8 still counts 8
        m = onnx.load(out)
        ints = {t.name: np.abs(onnx.numpy_helper.to_array(t).astype(np.int32)).max() for t in m.graph.initializer
                if t.data_type == onnx.TensorProto.INT8 and t.name.endswith(".weight_quantized")}
        by_op = {}
        for l in info.layers:
            if l.name + ".weight_quantized" in ints:
                by_op.setdefault("gemm" if l.op_type in ("MatMul", "Gemm") else "conv", []).append(
                    ints[l.name + ".weight_quantized"])
        peak[reduce] = {op: max(v) for op, v in by_op.items()}
    assert peak[False]["gemm"] == 127 and peak[True]["gemm"] <= 63
    assert peak[True]["conv"] == peak[False]["conv"] == 127


def test_a_shared_weight_memo_rounds_each_layer_once_across_targets(calibrated, tmp_path, monkeypatch):
    """The tensorrt target's report writes the same allocation for onnxruntime too: the integers are
    computed once (GPTQ) and both files hold the same ones."""
    import mpq_export.stages.quantize as qmod

    info, stats = calibrated
    alloc = allocate(info.layers, 7.6, "tensorrt", theta=np.linspace(0.1, 1, len(info.layers)))
    amax = choose_ranges(stats.act_hist, ActCalibSettings())
    calls = []
    real = qmod.quantize_layer_weight
    monkeypatch.setattr(qmod, "quantize_layer_weight", lambda *a, **k: calls.append(a[0].name) or real(*a, **k))
    memo = {}
    quantize(info, alloc, amax, str(tmp_path / "t.onnx"), QuantizeSettings(), "tensorrt", stats=stats, weight_memo=memo)
    first = len(calls)
    assert first == sum(f.quantized for f in alloc.formats) == len(memo)
    quantize(info, alloc, amax, str(tmp_path / "o.onnx"), QuantizeSettings(integer_conv=False), "onnxruntime", stats=stats, weight_memo=memo)
    assert len(calls) == first  # nothing rounded twice

    def stored(path):
        m = onnx.load(path)
        return {t.name: onnx.numpy_helper.to_array(t).astype(np.int8) for t in m.graph.initializer
                if t.name.endswith(".weight_quantized")}

    a, b = stored(str(tmp_path / "t.onnx")), stored(str(tmp_path / "o.onnx"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_external_weights_are_read_layer_by_layer_and_give_the_same_model(calibrated, unet_onnx, tmp_path, monkeypatch):
    """A model whose weights live in an external file (every Stable-Diffusion-size export) is quantized
    without loading them all: each layer's weight is read from the file when it is quantized, and the
    result is the model the inline copy gives."""
    import mpq_export.stages.quantize as qmod
    from onnx import numpy_helper

    info, stats = calibrated
    ext = tmp_path / "ext"
    ext.mkdir()
    onnx.save(onnx.load(unet_onnx), str(ext / "model.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=True, location="weights.data", size_threshold=0)
    info_ext = inspect_model(str(ext / "model.onnx"))
    assert info_ext.has_external_data
    alloc = allocate(info.layers, 5.0, "onnxruntime", theta=np.linspace(0.1, 1, len(info.layers)))
    amax = choose_ranges(stats.act_hist, ActCalibSettings())
    reads = []
    real = qmod.read_external_tensor
    monkeypatch.setattr(qmod, "read_external_tensor", lambda t, d: reads.append(t.name) or real(t, d))
    settings = QuantizeSettings()
    quantize(info, alloc, amax, str(tmp_path / "inline.onnx"), settings, "onnxruntime", stats=stats)
    assert not reads
    quantize(info_ext, alloc, amax, str(tmp_path / "external.onnx"), settings, "onnxruntime", stats=stats)
    assert set(l.weight_name for l in info.layers) <= set(reads)  # one read per weight, from the file

    def initializers(path):
        return {t.name: numpy_helper.to_array(t).tobytes() for t in onnx.load(path).graph.initializer}

    assert initializers(str(tmp_path / "inline.onnx")) == initializers(str(tmp_path / "external.onnx"))


def test_large_outputs_get_one_external_data_file_honouring_the_umask(tmp_path, monkeypatch):
    import os

    import mpq_export.util.onnx_io as qmod
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((64, 64), np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [w])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    monkeypatch.setattr(qmod, "EXTERNAL_DATA_BYTES", 1024)
    old = os.umask(0o022)
    try:
        qmod.save_model(model, str(tmp_path / "m.onnx"))
    finally:
        os.umask(old)
    data = tmp_path / "m.onnx.data"
    assert data.stat().st_size == 64 * 64 * 4 and (data.stat().st_mode & 0o777) == 0o644
    assert os.path.getsize(tmp_path / "m.onnx") < 4096  # the graph alone
