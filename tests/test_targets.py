"""targets: each target offers exactly the formats it stores, cheapest first, names the rest, and owns
its graph rules (FP16 graph, zero points, rule checker)."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mpq_export.formats import QuantizeSettings
from mpq_export.targets import DEFAULT_TARGET, TARGETS, Target, all_targets, get_target
from mpq_export.formats import CONV_OPS, GEMM_OPS, W4A8, W4A16, W8A8
from mpq_export.util.errors import MPQError


def test_tensorrt_has_no_int4_convolution_and_says_why():
    trt, ort = get_target("tensorrt"), get_target("onnxruntime")
    for op in CONV_OPS:
        assert trt.format_for(op, 4) is None
        assert "no INT4 convolution" in trt.why_not[(op, 4)]
        assert ort.format_for(op, 4) is W4A8  # onnxruntime stores 4-bit convolutions
    for op in GEMM_OPS:  # TensorRT's INT4 is weight-only, blocked: w4a16
        assert trt.format_for(op, 4) is W4A16
        assert trt.format_for(op, 8) is W8A8


def test_every_table_is_cheapest_first_and_covers_every_op():
    assert TARGETS == ("tensorrt", "onnxruntime") and DEFAULT_TARGET == "tensorrt"
    for target in all_targets():
        assert isinstance(target, Target) and get_target(target.name) is target and get_target(target) is target
        assert set(target.formats) == set(CONV_OPS) | set(GEMM_OPS)
        for op in target.formats:
            bits = [f.weight_bits for f in target.formats_for(op)]
            assert bits == sorted(bits) and bits[-1] == 16  # FP16 is always the fallback
            names = [f.name for f in target.formats_for(op)]
            assert len(set(names)) == len(names)
            # two formats of one nominal width either store different bits (low-rank branches of each size)
            # or are told apart by their errors (w8a8 and w8a8-sq: format_error.py, or the measured scores)


def test_unknown_target_is_a_one_line_error():
    with pytest.raises(MPQError, match="--target must be one of tensorrt, onnxruntime, got 'openvino'"):
        get_target("openvino")


def test_graph_rules_differ_where_the_runtimes_do():
    trt, ort = get_target("tensorrt"), get_target("onnxruntime")
    assert trt.activation_zero_point.dtype == np.int8 and int(trt.activation_zero_point) == 0
    assert ort.activation_zero_point.dtype == np.uint8 and int(ort.activation_zero_point) == 128
    assert (trt.dq_per_consumer, ort.dq_per_consumer) == (False, True)
    assert (trt.quantize_residual_adds, ort.quantize_residual_adds) == (True, False)
    assert (trt.builds_engines, ort.builds_engines) == (True, False)
    assert trt.compare_with == "onnxruntime" and ort.compare_with is None
    assert ort.quantizes_conv_outputs(QuantizeSettings()) and not ort.quantizes_conv_outputs(
        QuantizeSettings(integer_conv=False))
    assert not trt.quantizes_conv_outputs(QuantizeSettings())


def test_tensorrt_refuses_settings_it_cannot_build_or_would_ignore():
    trt, ort = get_target("tensorrt"), get_target("onnxruntime")
    with pytest.raises(MPQError, match="--block-size 32 cannot be built by TensorRT"):
        trt.check_quantize_settings(QuantizeSettings(block_size=32))
    with pytest.raises(MPQError, match="--float-conv-outputs .* add --target onnxruntime"):
        trt.check_quantize_settings(QuantizeSettings(integer_conv=False))
    ort.check_quantize_settings(QuantizeSettings(block_size=32, integer_conv=False))  # both fine there


def _matmul_model():
    w = numpy_helper.from_array(np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])


def test_finalize_keeps_the_fp32_graph_for_onnxruntime_and_converts_it_for_tensorrt():
    m = _matmul_model()
    assert get_target("onnxruntime").finalize(m) is m and get_target("onnxruntime").float_graph(m) is None
    fp16 = get_target("tensorrt").finalize(_matmul_model())
    assert {t.name: t.data_type for t in fp16.graph.initializer}["w"] == TensorProto.FLOAT16
    assert fp16.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # IO stays FP32
    onnx.checker.check_model(fp16)


def test_only_tensorrt_checks_its_rules(tmp_path):
    path = str(tmp_path / "m.onnx")
    onnx.save(_matmul_model(), path)
    assert get_target("onnxruntime").check_graph(path) is None
    with pytest.raises(MPQError, match="internal: the TensorRT graph breaks 1 rule"):  # no Q/DQ at all
        get_target("tensorrt").check_graph(path)


def test_reduce_range_auto_follows_the_cpu_and_the_report_says_why(monkeypatch):
    """--reduce-range auto (the default): on for an x86 CPU without VNNI (onnxruntime's integer GEMM can
    saturate there), off with VNNI or off x86; the decision and its reason reach the report's notes; the
    tensorrt target always keeps the full range."""
    import mpq_export.targets.onnxruntime as ort_target
    from mpq_export.config import PipelineConfig
    from mpq_export.core.choices import Switch

    for vnni, expect in ((False, Switch.YES), (True, Switch.NO), (None, Switch.NO)):
        monkeypatch.setattr(ort_target, "cpu_has_vnni", lambda: vnni)
        cfg = PipelineConfig(model="m.onnx", target="onnxruntime")
        assert cfg.quantize.reduce_range is expect
        assert len(cfg.decisions) == 1 and ("x86 without VNNI, where" in cfg.decisions[0]) == (vnni is False)
    monkeypatch.setattr(ort_target, "cpu_has_vnni", lambda: False)
    assert PipelineConfig(model="m.onnx").quantize.reduce_range is Switch.NO  # tensorrt
    explicit = PipelineConfig(model="m.onnx", target="onnxruntime", quantize=QuantizeSettings(reduce_range="no"))
    assert explicit.quantize.reduce_range is Switch.NO and explicit.decisions == []
