import numpy as np
import pytest

from mpq_export.stages.act_ranges import ActCalibSettings, choose_ranges
from mpq_export.stages.allocate import allocate
from mpq_export.stages.calibrate import CalibrationSettings, calibrate
from mpq_export.core.model_info import QuantLayer
from mpq_export.stages.inspect import inspect_model
from mpq_export.formats import QuantizeSettings
from mpq_export.stages.quantize import quantize, quantize_layer_weight
from mpq_export.formats.gptq import SCALE_MULTIPLIERS, gptq_scale_search, output_error, weight_matrix
from mpq_export.stages.rounding import HessianSum, layer_rows, weight_order
from mpq_export.runtime.sampler import NoiseSchedule
from mpq_export.formats import W4A8, W4A16


def _correlated_inputs(rng, rows, k):
    mix = rng.standard_normal((k, k)) / np.sqrt(k)
    return (rng.standard_normal((rows, k)) * np.linspace(0.1, 3, k)) @ mix


def test_hessian_sum_is_the_sum_of_trace_normalised_grams():
    """Accumulated in place by syrk, one chunk of rows at a time: the same as forming each X^T X /
    tr(X^T X) in float64 and adding; a chunk of zeros adds nothing and is not counted."""
    rng = np.random.default_rng(1)
    acc, ref = HessianSum(70), np.zeros((70, 70))
    for rows, gain in ((128, 0.01), (5, 1.0), (1500, 40.0)):
        x = (_correlated_inputs(rng, rows, 70) * gain).astype(np.float32)
        acc.add(x)
        g = x.astype(np.float64).T @ x
        ref += g / np.trace(g)
    acc.add(np.zeros((16, 70), np.float32))
    h = acc.result()
    assert acc.calls == 3 and h.dtype == np.float32 and h.flags.c_contiguous
    assert np.array_equal(h, h.T)
    np.testing.assert_allclose(h, ref, rtol=0, atol=1e-5 * np.abs(ref).max())
    assert np.trace(h) == pytest.approx(3.0, rel=1e-5)  # each chunk weighs one


def test_conv_rows_match_the_convolution():
    """The im2col rows and the weight matrix reproduce the Conv's output (so H is the right one)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 9, 9)).astype(np.float32)
    w = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    layer = QuantLayer(name="c", node_name="c", op_type="Conv", weight_name="w", weight_shape=w.shape, params=w.size,
                       activation_input="x", output="y", weight_axis=0, reduction_axis=-1,
                       conv_geometry=((2, 2), (1, 1, 1, 1), (1, 1), 1))
    rows = layer_rows(x, layer, np.random.default_rng(0))[:, weight_order(layer)]  # 2 * 5 * 5 = 50 rows, all kept
    y = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), stride=2, padding=1).numpy()
    got = np.sort((rows @ weight_matrix(w, layer).T).ravel())
    np.testing.assert_allclose(got, np.sort(y.transpose(0, 2, 3, 1).reshape(-1, 5).ravel()), rtol=1e-4, atol=1e-4)


def test_gptq_through_calibration_and_quantize(unet_onnx, tmp_path):
    info = inspect_model(unet_onnx)
    stats = calibrate(info, CalibrationSettings(steps=6, timesteps=2, samples=6), NoiseSchedule(), input_statistics=True)
    conv = info.layer("mid_block.resnets.0.conv1")
    attn = next(l for l in info.layers if l.op_type in ("MatMul", "Gemm") and l.name.endswith("to_q"))
    assert conv.name in stats.hessians and attn.name in stats.hessians
    import onnx
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(unet_onnx).graph.initializer}
    for layer, fmt in ((conv, W4A8), (attn, W4A16)):
        w, h = inits[layer.weight_name], stats.hessians[layer.name]
        rtn = quantize_layer_weight(layer, w, fmt, QuantizeSettings())
        gq = quantize_layer_weight(layer, w, fmt, QuantizeSettings(rounding="gptq"), h)
        # same file format; INT4 per channel (the conv): each channel's scale is the round-to-nearest one
        # times one multiplier from the search; INT4 blocks (the MatMul) keep their scales
        assert gq.scale.shape == rtn.scale.shape and gq.values.shape == rtn.values.shape
        if gq.block_size is None:
            ratio = gq.scale / rtn.scale
            assert np.all(np.min(np.abs(ratio[:, None] - np.array(SCALE_MULTIPLIERS)), axis=1) < 1e-5)
            # and they are the search's own choice: quantize writes exactly what gptq_scale_search picks
            q, mult = gptq_scale_search(weight_matrix(w, layer), weight_matrix(rtn.scale_like(), layer), h, 7)
            np.testing.assert_allclose(gq.scale, rtn.scale * mult, rtol=1e-6)
            np.testing.assert_array_equal(weight_matrix(gq.values, layer), q)
            assert np.any(mult != 1.0)  # on this conv the search moves some channels (0.95, 1.05)
        else:
            np.testing.assert_array_equal(rtn.scale, gq.scale)
        e = lambda q: output_error(weight_matrix(w, layer), weight_matrix(q.dequantize(), layer), h)  # noqa: E731
        assert e(gq) < e(rtn)
    alloc = allocate(info.layers, 4.5, "onnxruntime", theta=np.ones(len(info.layers)))
    amax = choose_ranges(stats.act_hist, ActCalibSettings())
    quantize(info, alloc, amax, str(tmp_path / "g.onnx"), QuantizeSettings(rounding="gptq"), "onnxruntime", stats=stats)
    assert (tmp_path / "g.onnx").exists()
