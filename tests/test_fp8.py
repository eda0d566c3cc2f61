"""FP8 (E4M3) beside INT8 on the tensorrt target: the format, the GPU families that offer it, the choice
between formats of equal bits, the Q/DQ graph and its rules, and the CLI."""

import json

import ml_dtypes
import numpy as np
import onnx
import pytest
from conftest import run_cli
from onnx import TensorProto, helper, numpy_helper

from mpq_export.config import PipelineConfig
from mpq_export.stages.act_ranges import ActCalibSettings, ActivationRanges
from mpq_export.stages.allocate import AllocationSettings, allocate, candidates, equal_bit_alternatives
from mpq_export.stages.inspect import inspect_model
from mpq_export.formats import FP8, QuantizeSettings
from mpq_export.formats.weights import quantize_weight, quantize_weight_fp8, to_fp8
from mpq_export.stages.quantize import count_weight_bits, quantize
from mpq_export.targets import gpus
from mpq_export.targets.tensorrt import TensorRTTarget
from mpq_export.targets.trt_rules import check_model
from mpq_export.util.errors import MPQError

HOPPER = TensorRTTarget(gpus.family("hopper"), "--gpu hopper")


def test_fp8_rounds_to_nearest_even_and_saturates_at_448():
    x = np.array([1.0625, 1.1875, 500.0, -1e9, 0.0, 2.0 ** -10, 2.0 ** -9], np.float32)
    # 1.0625 lies halfway between 1.0 and 1.125: ties to the even mantissa (1.0); 1.1875 -> 1.25 likewise
    np.testing.assert_array_equal(to_fp8(x), [1.0, 1.25, 448.0, -448.0, 0.0, 0.0, 2.0 ** -9])


def test_fp8_weights_are_stored_one_byte_each_and_round_trip():
    q = quantize_weight_fp8(np.random.default_rng(0).standard_normal((24, 10)).astype(np.float32), axis=1)
    stored, dtype = FP8.stored_constant(q.values)
    t = stored.tensor
    assert dtype == "fp8" and t.data_type == TensorProto.FLOAT8E4M3FN and len(t.raw_data) == 240
    np.testing.assert_array_equal(numpy_helper.to_array(t).astype(np.float32), q.values)
    assert np.abs(q.values).max() <= 448 and q.scale.shape == (10,)


def test_fp8_error_is_relative_int8_error_absolute():
    """FP8's relative error is about the same for small and large weights of one channel; INT8's grows as
    the values shrink. A channel with outliers: FP8 holds the small values better, INT8 the Gaussian bulk."""
    rng = np.random.default_rng(1)
    gauss = rng.standard_normal((4096, 1)).astype(np.float32)
    spiky = gauss.copy()
    spiky[:4] *= 200.0  # four outliers set the scale of the whole channel
    for w, better in ((gauss, "int8"), (spiky, "fp8")):
        e8 = float(((quantize_weight(w, 8, axis=1).dequantize() - w)[4:] ** 2).sum())
        ef = float(((quantize_weight_fp8(w, axis=1).dequantize() - w)[4:] ** 2).sum())
        assert (e8 < ef) == (better == "int8"), (better, e8, ef)


def test_formats_option_is_checked_against_the_target_and_gpu(unet_onnx):
    with pytest.raises(MPQError, match=r"--formats fp8: not stored by the tensorrt target \(the table used: ampere; "
                                       r"--gpu ada runs fp8\)"):
        PipelineConfig(model=unet_onnx, gpu="ampere", allocation=AllocationSettings(formats=("fp16", "fp8")))
    with pytest.raises(MPQError, match="--formats takes a comma list of"):
        AllocationSettings(formats=("fp16", "int3"))
    with pytest.raises(MPQError, match="lists no quantized format"):
        AllocationSettings(formats=("fp16",))
    cfg = PipelineConfig(model=unet_onnx, gpu="hopper", allocation=AllocationSettings(formats=("fp16", "fp8")))
    assert cfg.target.gpu.name == "hopper" and cfg.target.gpu_reason == "--gpu hopper"


def test_equal_bit_choice_follows_the_error_and_sensitivity_decides_inside_the_program(unet_onnx):
    info = inspect_model(unet_onnx)
    both = AllocationSettings(formats=("fp16", "w8a8", "fp8"))
    cands, _ = candidates(info.layers, HOPPER, both)
    tied = equal_bit_alternatives(info.layers, cands)
    assert tied and all({f.name for f in fmts} == {"w8a8", "fp8"} for fmts in tied.values())
    names = list(tied)
    prefer_fp8 = set(names[::2])
    err = {n: {"w8a8": 2.0 if n in prefer_fp8 else 1.0, "fp8": 1.0 if n in prefer_fp8 else 2.0} for n in names}
    bits = allocate(info.layers, 8, HOPPER, AllocationSettings(method="uniform", formats=("fp16", "w8a8"))).achieved_bits
    a = allocate(info.layers, bits, HOPPER, both, theta=np.ones(len(info.layers)), format_error=err)
    chosen = dict(zip(a.layer_names, (f.name for f in a.formats)))
    assert {n for n in names if chosen[n] == "fp8"} == prefer_fp8
    assert a.equal_bit_choices == err and a.achieved_bits == pytest.approx(bits)
    # measured sensitivity: the program itself trades the two (no pre-selection), same answer
    sens = {l.name: {"fp16": 0.0, **err.get(l.name, {"w8a8": 1.0, "fp8": 1.0})} for l in info.layers}
    b = allocate(info.layers, bits, HOPPER, both, sensitivity=sens)
    assert dict(zip(b.layer_names, (f.name for f in b.formats))) == chosen
    # without an error term the target's first format of the width (w8a8) is kept
    c = allocate(info.layers, bits, HOPPER, both, theta=np.ones(len(info.layers)))
    assert not any(f.name == "fp8" for f in c.formats)


def _matmul_model(path, w):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", w.shape[0]])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", w.shape[1]])
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="proj")], "g", [x], [y],
                          [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_fp8_layer_runs_under_onnxruntime_as_tensorrt_defines_it(tmp_path):
    """One FP8 MatMul on the tensorrt target: FP8 weights and input in the file, FP16 scales, the rules hold,
    the counted bits are 8, and onnxruntime's output is the FP8 fake-quantized product."""
    import onnxruntime as ort

    rng = np.random.default_rng(3)
    w = rng.standard_normal((64, 32)).astype(np.float32)
    src = str(tmp_path / "mm.onnx")
    _matmul_model(src, w)
    from mpq_export.core.model_info import ModelInfo, QuantLayer

    # a bare MatMul is no denoiser (inspect wants a timestep input): its one layer described by hand
    layer = QuantLayer(name="proj", node_name="proj", op_type="MatMul", weight_name="w", weight_shape=(64, 32),
                       params=w.size, activation_input="x", output="y", weight_axis=1, reduction_axis=0)
    info = ModelInfo(path=src, sample=None, timestep=None, conditioning=[], output="y", layers=[layer], opset=17,
                     sample_size=None)
    alloc = allocate([layer], 8, HOPPER, AllocationSettings(formats=("fp8",)), theta=np.ones(1))
    assert [f.name for f in alloc.formats] == ["fp8"]
    x = (rng.standard_normal((8, 64)) * 3).astype(np.float32)
    amax = float(np.abs(x).max())
    out = str(tmp_path / "q.onnx")
    ranges = ActivationRanges({"x": amax / 2}, {"x": amax}, ActCalibSettings())
    quantize(info, alloc, ranges, out, QuantizeSettings(rounding="nearest"), HOPPER)
    assert check_model(out) == []
    assert count_weight_bits(out, info)[0] == 8.0
    m = onnx.load(out)
    types = {i.name: i.data_type for i in m.graph.initializer}
    assert types["proj.weight_quantized"] == TensorProto.FLOAT8E4M3FN
    assert types["x_act_scale_fp8"] == TensorProto.FLOAT16 and types["proj.weight_scale"] == TensorProto.FLOAT16
    got = ort.InferenceSession(out, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    s_x = np.float32(np.float16(amax / 448))
    qw = quantize_weight_fp8(w, axis=1, clip_search=True)
    w_hat = qw.values * qw.scale.astype(np.float16).astype(np.float32)
    ref = (to_fp8(x.astype(np.float16).astype(np.float32) / s_x) * s_x) @ w_hat
    np.testing.assert_allclose(got, ref, rtol=2e-2, atol=2e-2 * float(np.abs(ref).max()))


def test_checker_refuses_mixed_and_weight_only_fp8(tmp_path):
    rng = np.random.default_rng(4)
    w = to_fp8(rng.standard_normal((16, 8)) * 10)
    for inp, expect in (("int8", "FLOAT8E4M3FN weights with a INT8 input"), ("float", "FP8 weights with a float input")):
        nodes, inits = [], [numpy_helper.from_array(w.astype(ml_dtypes.float8_e4m3fn), "wq"),
                            numpy_helper.from_array(np.full(8, 0.1, np.float16), "ws")]
        x_in = "x"
        if inp == "int8":
            inits += [numpy_helper.from_array(np.array(0.1, np.float16), "s"), numpy_helper.from_array(np.array(0, np.int8), "zp")]
            nodes += [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"], name="q"),
                      helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"], name="dq")]
            x_in = "xd"
        nodes += [helper.make_node("DequantizeLinear", ["wq", "ws"], ["wd"], name="wdq", axis=1),
                  helper.make_node("MatMul", [x_in, "wd"], ["y"], name="mm")]
        g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [2, 8])], inits)
        p = str(tmp_path / f"{inp}.onnx")
        onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)]), p)
        problems = check_model(p)
        assert any(expect in v for v in problems), problems


FAST = ["--steps", "6", "--timesteps", "2", "--samples", "4", "--val-samples", "2", "--no-stability",
        "--no-act-costs"]


def test_cli_writes_fp8_for_hopper_and_never_for_ampere(unet_onnx, tmp_path):
    out = tmp_path / "fp8"
    code, _, err = run_cli(unet_onnx, "--budget", "8", "--gpu", "hopper", "--formats", "fp16,fp8", "--allocation",
                           "uniform", "-o", out, *FAST)
    assert code == 0, err
    rep = json.loads((out / "report.json").read_text())
    q = str(out / "model.mpq.onnx")
    counted, _ = count_weight_bits(q, inspect_model(unet_onnx))
    assert counted == pytest.approx(rep["counted_bits"]) == pytest.approx(rep["achieved_bits"])
    assert rep["format_counts"].get("fp8", 0) > 0 and rep["gpu"] == "hopper (--gpu hopper)"
    assert rep["check"].startswith("passed") and np.isfinite(rep["validation"]["sample_psnr_db"])
    assert any(i.data_type == TensorProto.FLOAT8E4M3FN for i in onnx.load(q, load_external_data=False).graph.initializer)
    code, stdout, _ = run_cli("check", q)
    assert code == 0 and "OK" in stdout
    # the same model for an Ampere GPU: no FP8 anywhere, and FP8 refused by name
    out2 = tmp_path / "ampere"
    code, _, err = run_cli(unet_onnx, "--budget", "7.6", "--gpu", "ampere", "-o", out2, *FAST)
    assert code == 0, err
    m = onnx.load(str(out2 / "model.mpq.onnx"), load_external_data=False)
    assert not any(i.data_type == TensorProto.FLOAT8E4M3FN for i in m.graph.initializer)
    assert json.loads((out2 / "report.json").read_text())["gpu"] == "ampere (--gpu ampere)"
    code, _, err = run_cli(unet_onnx, "--budget", "8", "--gpu", "ampere", "--formats", "fp16,fp8", "-o",
                           tmp_path / "no", *FAST)
    assert code == 1 and err.count("\n") == 1 and "--gpu ada runs fp8" in err and not (tmp_path / "no").exists()
    code, _, err = run_cli(unet_onnx, "--budget", "8", "--target", "onnxruntime", "--gpu", "hopper", "-o",
                           tmp_path / "no", *FAST)
    assert code == 1 and "drop --gpu or use --target tensorrt" in err and not (tmp_path / "no").exists()


def test_sensitivity_probes_fp8_inputs(unet_onnx):
    """The measured scorer probes FP8 candidates with an FP8 input branch of their own."""
    from mpq_export.runtime.sampler import NoiseSchedule
    from mpq_export.stages.act_ranges import ActCalibSettings, choose_ranges
    from mpq_export.stages.calibrate import CalibrationSettings, calibrate
    from mpq_export.stages.sensitivity import measure_sensitivity

    info = inspect_model(unet_onnx)
    stats = calibrate(info, CalibrationSettings(steps=10, timesteps=2, samples=4), NoiseSchedule())
    ranges = choose_ranges(stats.act_hist, ActCalibSettings())
    cands, _ = candidates(info.layers, HOPPER, AllocationSettings(formats=("fp16", "w8a8", "fp8")))
    sens = measure_sensitivity(info, stats, ranges, cands, QuantizeSettings(rounding="nearest"), 1.0,
                               samples=2).scores
    for l, c in zip(info.layers, cands):
        for f in c:
            v = sens[l.name][f.name]
            assert np.isfinite(v) and (v > 0) == f.quantized
    # the FP8 branch changes something: FP8 and INT8 errors differ on most layers
    differ = sum(abs(sens[n]["fp8"] - sens[n]["w8a8"]) > 1e-3 * sens[n]["w8a8"] for n in sens if "fp8" in sens[n])
    assert differ > len(sens) // 2


def test_fp8_attention_quantizes_both_inputs_of_every_attention_matmul(unet_onnx, tmp_path):
    """--fp8-attention: Q K^T and P V take FP8 on both inputs (the Softmax output at scale 1/448, Q, K and V
    from their calibrated maxima, which calibration measures only then); the checker accepts it."""
    out = tmp_path / "att"
    code, _, err = run_cli(unet_onnx, "--budget", "8", "--gpu", "hopper", "--fp8-attention", "-o", out, *FAST)
    assert code == 0, err
    info = inspect_model(unet_onnx)
    assert info.attention_matmuls and all(m.softmax_input is not None for m in info.attention_matmuls[1::2])
    m = onnx.load(str(out / "model.mpq.onnx"))
    producers = {o: n for n in m.graph.node for o in n.output}
    inits = {i.name: i for i in m.graph.initializer}
    by_name = {n.name: n for n in m.graph.node}
    for mm in info.attention_matmuls:
        node = by_name[mm.node_name]
        for idx, t in enumerate(node.input):
            dq = producers[t]
            assert dq.op_type == "DequantizeLinear" and inits[dq.input[2]].data_type == TensorProto.FLOAT8E4M3FN
            if idx == mm.softmax_input:
                assert float(numpy_helper.to_array(inits[dq.input[1]])) == pytest.approx(1 / 448, rel=1e-3)
    assert check_model(str(out / "model.mpq.onnx")) == []
    assert np.isfinite(json.loads((out / "report.json").read_text())["validation"]["sample_psnr_db"])


