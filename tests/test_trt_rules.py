"""The tensorrt target: FP16 + Q/DQ graphs that pass the TensorRT rule checker, and a checker that
catches hand-broken models."""

import json
import shutil

import numpy as np
import onnx
import pytest
from conftest import run_cli
from onnx import numpy_helper

import models
from mpq_export.targets.trt_rules import check_model
from mpq_export.stages.inspect import inspect_model
from conftest import run_cpu_check
from mpq_export.stages.quantize import count_weight_bits

FAST = ["--steps", "10", "--timesteps", "4", "--samples", "8", "--val-samples", "4"]


@pytest.fixture(scope="module")
def trt_out(unet_onnx, tmp_path_factory):
    out = tmp_path_factory.mktemp("trt") / "out"
    code, _, err = run_cli(unet_onnx, "--budget", "7.6", "-o", out, *FAST, "--target", "tensorrt")
    assert code == 0, err
    return out


def test_tensorrt_artifact_passes_the_checker_and_reports_both_targets(trt_out, unet_onnx):
    q = str(trt_out / "model.mpq.onnx")
    assert check_model(q) == []
    code, stdout, _ = run_cli("check", q)
    assert code == 0 and "OK" in stdout
    rep = json.loads((trt_out / "report.json").read_text())
    assert rep["target"] == "tensorrt" and rep["check"].startswith("passed")
    cmp = {row["graph"]: row for row in rep["validation_compare"]}
    trt_sqnr = cmp["tensorrt target (FP16 graph + Q/DQ)"]["mean_sqnr_db"]
    ort_sqnr = cmp["FP32 graph + the same Q/DQ (onnxruntime, conv outputs float)"]["mean_sqnr_db"]
    # FP16 costs little next to quantization (the two graphs differ in more than FP16: where conv outputs
    # are quantized, so the tensorrt graph may also come out ahead on a random model)
    assert trt_sqnr > ort_sqnr - 1.0
    assert cmp["FP16 graph alone (no quantization)"]["mean_sqnr_db"] > 40  # the FP16 graph alone stays close to FP32
    # the budget, the allocation, the report and the file count the same stored bits
    counted, per_layer = count_weight_bits(q, inspect_model(unet_onnx))
    assert counted == pytest.approx(rep["achieved_bits"], abs=1e-12) and counted <= 7.6
    assert "storage_bits" not in rep
    assert "w4a16" in rep["format_counts"] and "w4a8" not in rep["format_counts"]
    m = onnx.load(q)
    int4_consumers = set()
    producers = {o: n for n in m.graph.node for o in n.output}
    inits = {i.name: i for i in m.graph.initializer}
    for n in m.graph.node:
        if n.op_type in ("Conv", "MatMul", "Gemm") and n.input[1] in producers:
            dq = producers[n.input[1]]
            if dq.op_type == "DequantizeLinear" and inits[dq.input[0]].data_type == onnx.TensorProto.INT4:
                int4_consumers.add(n.op_type)
    assert int4_consumers == {"MatMul"} or int4_consumers == {"Gemm"} or int4_consumers == {"MatMul", "Gemm"}
    assert rep["engine"]["status"].startswith("skipped")  # no TensorRT on CPU machines


def test_printed_polygraphy_cpu_command_passes(trt_out, unet_onnx):
    passed, tail = run_cpu_check(str(trt_out), unet_onnx)
    assert passed, tail
    assert "PASSED" in tail and (trt_out / "fp32_outputs.json").exists()


def test_polygraphy_command_fails_a_broken_quantization(trt_out, unet_onnx, tmp_path):
    """Activation scales 1000x too large (everything rounds to 0) must fail the same thresholds."""
    broken = tmp_path / "broken"
    shutil.copytree(trt_out, broken)
    m = onnx.load(str(broken / "model.mpq.onnx"))
    scales = [i for i in m.graph.initializer if i.name.endswith("_act_scale")]
    assert scales
    for init in scales:
        init.CopyFrom(numpy_helper.from_array((numpy_helper.to_array(init) * 1000).astype(np.float16), init.name))
    onnx.save(m, str(broken / "model.mpq.onnx"))
    passed, tail = run_cpu_check(str(broken), unet_onnx)
    assert not passed, tail


def _edit(path, tmp_path, fn, name):
    m = onnx.load(str(path))
    fn(m)
    out = tmp_path / f"{name}.onnx"
    onnx.save(m, str(out))
    return str(out)


def _init(m, name):
    return next(i for i in m.graph.initializer if i.name == name)


def _set(m, name, arr):
    _init(m, name).CopyFrom(numpy_helper.from_array(arr, name))


def test_checker_catches_hand_broken_models(trt_out, tmp_path):
    q = trt_out / "model.mpq.onnx"
    m = onnx.load(str(q))
    qnode = next(n for n in m.graph.node if n.op_type == "QuantizeLinear")
    conv_dq = next(n for n in m.graph.node if n.op_type == "DequantizeLinear" and n.name.endswith("conv1.weight_DequantizeLinear"))
    mm_dq = next(n for n in m.graph.node if n.op_type == "DequantizeLinear" and ".to_q.weight" in n.name)

    def nonzero_zp(m):
        _set(m, qnode.input[2], np.array(3, np.int8))

    def per_channel_act(m):
        _set(m, qnode.input[1], np.full((4,), 0.1, np.float16))

    def wrong_axis(m):
        node = next(n for n in m.graph.node if n.name == conv_dq.name)
        for a in node.attribute:
            if a.name == "axis":
                a.i = 1
        w = numpy_helper.to_array(_init(m, node.input[0]))
        _set(m, node.input[1], np.full((w.shape[1],), 0.01, np.float16))

    def int4_conv(m):
        node = next(n for n in m.graph.node if n.name == conv_dq.name)
        import ml_dtypes

        w = numpy_helper.to_array(_init(m, node.input[0]))
        _set(m, node.input[0], np.clip(w, -7, 7).astype(ml_dtypes.int4))

    def fp32_scale(m):
        _set(m, mm_dq.input[1], numpy_helper.to_array(_init(m, mm_dq.input[1])).astype(np.float32))

    cases = {"nonzero_zp": (nonzero_zp, "zero point is not 0"),
             "per_channel_act": (per_channel_act, "must be per tensor"),
             "wrong_axis": (wrong_axis, "per-channel axis 1, expected 0"),
             "int4_conv": (int4_conv, "no INT4 convolution"),
             "fp32_scale": (fp32_scale, "not FLOAT16")}
    for name, (fn, needle) in cases.items():
        path = _edit(q, tmp_path, fn, name)
        problems = check_model(path)
        assert any(needle in p for p in problems), (name, problems)
        code, stdout, _ = run_cli("check", path)
        assert code == 1 and needle in stdout


def test_residual_add_inputs_are_quantized(trt_out, unet_onnx):
    info = inspect_model(unet_onnx)
    assert info.residual_adds
    m = onnx.load(str(trt_out / "model.mpq.onnx"))
    producers = {o: n for n in m.graph.node for o in n.output}
    rep = json.loads((trt_out / "report.json").read_text())
    fmt = {l["name"]: l["format"] for l in rep["layers"]}
    for residual in info.residual_adds:
        add = next(n for n in m.graph.node if n.name == residual.node_name)
        if any(fmt[f] in ("w8a8", "w4a8") for f in residual.feeds):
            assert all(producers[i].op_type == "DequantizeLinear" for i in add.input)


@pytest.mark.parametrize("variant", ["no_attention", "conditional"])
def test_checker_passes_other_unet_configurations(variant, tmp_path, cond_unet_onnx):
    if variant == "no_attention":
        path = models.export(models.tiny_unet2d(seed=3, channels=(8, 16), attention=False), str(tmp_path / "m"))
    else:
        path = cond_unet_onnx
    out = tmp_path / "out"
    code, _, err = run_cli(path, "--budget", "7.7,8", "-o", out, *FAST, "--no-stability")
    assert code == 0, err
    for b in ("7.7", "8"):
        assert check_model(str(out / f"budget-{b}" / "model.mpq.onnx")) == []
    summary = json.loads((out / "summary.json").read_text())  # one calibration, a Pareto summary over budgets
    assert [r["budget"] for r in summary] == [7.7, 8.0]
    assert summary[0]["achieved_bits"] < summary[1]["achieved_bits"] <= 8.0
    assert (out / "pareto.png").exists() and "budget-8" in (out / "summary.md").read_text()


def test_build_engine_yes_fails_clearly_without_tensorrt(unet_onnx, tmp_path):
    from mpq_export.runtime.engine import tensorrt_status

    if tensorrt_status()[0]:
        pytest.skip("TensorRT is present: this test is about machines without it")
    code, _, err = run_cli(unet_onnx, "--budget", "8", "-o", tmp_path / "o", *FAST, "--build-engine", "yes")
    assert code == 1 and "--build-engine yes" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_check_takes_an_output_folder(trt_out, tmp_path):
    code, stdout, _ = run_cli("check", trt_out)
    assert code == 0 and f"{trt_out / 'model.mpq.onnx'}: OK" in stdout
    sweep = tmp_path / "sweep"
    (sweep / "budget-8").mkdir(parents=True)
    (sweep / "budget-8" / "model.mpq.onnx").write_bytes((trt_out / "model.mpq.onnx").read_bytes())
    code, _, err = run_cli("check", sweep)
    assert code == 1 and "one model per budget (budget-8)" in err and err.count("\n") == 1
    code, _, err = run_cli("check", tmp_path / "sweep" / "budget-8")
    assert code == 0
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli("check", tmp_path / "empty")
    assert code == 1 and "without model.mpq.onnx" in err and err.count("\n") == 1


def test_check_refuses_a_model_written_for_the_onnxruntime_target(trt_out, tmp_path):
    ort_out = tmp_path / "ort"
    ort_out.mkdir()
    (ort_out / "model.mpq.onnx").write_bytes((trt_out / "model.mpq.onnx").read_bytes())
    (ort_out / "report.json").write_text(json.dumps({"tool": "mpq-export", "target": "onnxruntime"}))
    for arg in (ort_out, ort_out / "model.mpq.onnx"):
        code, _, err = run_cli("check", arg)
        assert code == 1 and "written for --target onnxruntime" in err and err.count("\n") == 1
    for other in ("{not json", json.dumps({"tool": "another", "target": "onnxruntime"})):
        (ort_out / "report.json").write_text(other)  # not our report: the file is checked as it is
        assert run_cli("check", ort_out)[0] == 0
