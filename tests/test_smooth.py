"""smooth: W8A8 with per-input-channel smoothing. On inputs with outlier channels it lowers the layer's
output error, the expected-error model says so before any forward, the graph holds the Mul before the INT8
quantize, passes TensorRT's rules and counts 8 bits."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mpq_export.core.model_info import ModelInfo, QuantLayer
from mpq_export.formats import W8A8, W8A8_SQ, LayerCalibration, QuantizeSettings
from mpq_export.formats.smooth import ALPHAS
from mpq_export.stages.act_ranges import ActCalibSettings, ActivationHistograms, ActivationRanges
from mpq_export.stages.allocate import AllocationSettings, allocate
from mpq_export.stages.quantize import count_weight_bits, quantize
from mpq_export.targets.trt_rules import check_model

K, N = 96, 64


def _layer():
    return QuantLayer(name="proj", node_name="proj", op_type="MatMul", weight_name="w", weight_shape=(K, N),
                      params=K * N, activation_input="x", output="y", weight_axis=1, reduction_axis=0)


def _outlier_inputs(seed=0, rows=4096):
    """Transformer-like inputs: a few channels 30x larger than the rest."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, K)).astype(np.float32)
    x[:, [3, 40, 77]] *= 30.0
    return x


def _calibration(x):
    hist = ActivationHistograms.empty(["x"], 1)
    hist.add("x", 0, x)
    h = (x.T.astype(np.float64) @ x / float((x.astype(np.float64) ** 2).sum())).astype(np.float32)
    amax = float(np.abs(x).max())
    return LayerCalibration(hessian=h, channel_amax=np.abs(x).max(0), channel_ms=(x.astype(np.float64) ** 2).mean(0),
                            counts=hist.counts[0].sum(0), energy=float(hist.sumsq.sum()),
                            thresholds={"int8": amax, "fp8": amax}), amax


def _int8(x, threshold):
    s = max(threshold, 1e-6) / 127
    return np.clip(np.round(x / s), -127, 127) * s


def _real_error(fmt, layer, w, x, cal, amax):
    """The layer's real relative output error in `fmt` (weights and input quantized as the graph does)."""
    q = fmt.quantize_weight(layer, w, QuantizeSettings(rounding="nearest"), cal)
    if fmt is W8A8_SQ:
        xq = _int8(x / q.s, q.threshold) * q.s
    else:
        xq = _int8(x, amax)
    y, yq = x @ w, xq @ q.dequantize()
    return float(((yq - y) ** 2).sum() / (y ** 2).sum())


def test_smoothing_lowers_the_output_error_on_outlier_channels_and_the_model_sees_it():
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((K, N)) * 0.05).astype(np.float32)
    x = _outlier_inputs()
    cal, amax = _calibration(x)
    layer = _layer()
    real = {f.name: _real_error(f, layer, w, x, cal, amax) for f in (W8A8, W8A8_SQ)}
    assert real["w8a8-sq"] < real["w8a8"] / 3, real
    from mpq_export.stages.format_error import format_error

    expected = {f.name: format_error(layer, w, f, QuantizeSettings(rounding="nearest"), cal) for f in (W8A8, W8A8_SQ)}
    assert expected["w8a8-sq"] < expected["w8a8"], expected
    q = W8A8_SQ.quantize_weight(layer, w, QuantizeSettings(rounding="nearest"), cal)
    assert q.alpha in ALPHAS and q.s.shape == (K,) and q.threshold < amax  # the outliers moved into the weight


def test_the_graph_smooths_then_quantizes_and_counts_8_bits(tmp_path):
    import onnxruntime as ort

    rng = np.random.default_rng(2)
    w = (rng.standard_normal((K, N)) * 0.05).astype(np.float32)
    x = _outlier_inputs(3, 512)
    src = str(tmp_path / "mm.onnx")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="proj")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", K])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", N])],
                          [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), src)
    layer = _layer()
    info = ModelInfo(path=src, sample=None, timestep=None, conditioning=[], output="y", layers=[layer], opset=17,
                     sample_size=None)

    class Stats:  # what quantize reads of the calibration: one layer's statistics
        def for_layer(self, layer, ranges):
            return _calibration(x)[0]

    alloc = allocate([layer], 8, "tensorrt", AllocationSettings(formats=("w8a8-sq",)), theta=np.ones(1))
    out = str(tmp_path / "q.onnx")
    amax = float(np.abs(x).max())
    quantize(info, alloc, ActivationRanges({"x": amax}, {"x": amax}, ActCalibSettings()), out,
             QuantizeSettings(rounding="nearest"), "tensorrt", stats=Stats())
    assert check_model(out) == [] and count_weight_bits(out, info)[0] == 8.0
    m = onnx.load(out)
    order = [n.op_type for n in m.graph.node]
    assert order.index("Mul") < order.index("QuantizeLinear") < order.index("MatMul")
    got = ort.InferenceSession(out, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    exact = x @ w
    plain = _int8(x, amax) @ W8A8.quantize_weight(layer, w, QuantizeSettings(rounding="nearest"), None).dequantize()
    assert ((got - exact) ** 2).sum() < ((plain - exact) ** 2).sum() / 3
