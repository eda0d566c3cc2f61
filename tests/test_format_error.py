"""format_error: the expected error of a layer's formats, read off calibration (no forwards): the weight's
relative output error under its input statistics plus its input quantizer's relative error."""

import numpy as np
import pytest

from mpq_export.formats import FP8, W4A8, W4A16, W8A8, QuantizeSettings
from mpq_export.formats.gptq import output_error, weight_matrix
from mpq_export.stages.act_ranges import ActCalibSettings, choose_ranges
from mpq_export.stages.format_error import expected_format_error, weight_error
from mpq_export.util.onnx_io import iter_initializers


def test_more_bits_less_error_and_a_float_input_adds_none(calibrated):
    info, stats = calibrated
    ranges = choose_ranges(stats.act_hist, ActCalibSettings())
    convs = [l for l in info.layers if l.op_type == "Conv"][:6]
    err = expected_format_error(info, {l.name: [W4A8, W8A8, FP8] for l in convs}, stats, ranges,
                                QuantizeSettings(rounding="nearest"))
    for l in convs:
        e = err[l.name]
        assert 0 < e["w8a8"] < e["w4a8"], (l.name, e)  # 8-bit weights, the same INT8 input
    gemm = next(l for l in info.layers if l.op_type in ("MatMul", "Gemm"))
    cal = stats.for_layer(gemm, ranges)
    assert W4A16.input_error(gemm, None, None, cal) == 0.0 and W8A8.input_error(gemm, None, None, cal) > 0.0


def test_weight_error_is_the_relative_output_error_under_h(calibrated):
    """With H, the weight term is ||(W - W^) ||_H / ||W||_H: computed here directly from the dequantized weight."""
    info, stats = calibrated
    layer = next(l for l in info.layers if l.name in stats.hessians and l.op_type == "Conv")
    (_, w), = iter_initializers(info.path, [layer.weight_name])
    w = w.astype(np.float32)
    h = stats.hessians[layer.name]
    settings = QuantizeSettings(rounding="nearest")
    w_hat = W4A8.effective_weight(layer, w, settings, h)
    wm = weight_matrix(w, layer)
    expected = output_error(wm, weight_matrix(w_hat, layer), h) / output_error(wm, np.zeros_like(wm), h)
    assert weight_error(layer, w, W4A8, settings, h) == pytest.approx(expected, rel=1e-9)
    assert weight_error(layer, w, W8A8, settings, h) < expected / 10


@pytest.mark.parametrize("rounding", ["nearest", "gptq"])
def test_wide_layers_are_measured_on_a_sample_of_their_output_channels(rounding):
    """Past ERROR_ROWS_FROM output channels the error model quantizes ERROR_ROWS of them: each format's
    channels are those of the whole weight's quantization (the low-rank branch and the smoothing from the
    whole weight), and the sampled errors estimate the whole layer's within 15% (measured: 2 to 10%), more bits
    less error."""
    from mpq_export.core.model_info import QuantLayer
    from mpq_export.formats import W8A8_SQ, LayerCalibration, LowRankFormat
    from mpq_export.formats.base import ERROR_ROWS, ERROR_ROWS_FROM, error_rows

    rng = np.random.default_rng(0)
    k, n = 128, ERROR_ROWS_FROM + 200
    layer = QuantLayer(name="wide", node_name="wide", op_type="MatMul", weight_name="w", weight_shape=(k, n),
                       params=k * n, activation_input="x", output="y", weight_axis=1, reduction_axis=0)
    w = (rng.standard_t(5, (k, n)) * rng.uniform(0.2, 2.0, (1, n))).astype(np.float32)
    x = rng.standard_normal((4096, k))
    x[:, :4] *= 12.0  # outlier channels, for smoothing to matter
    h = (x.T @ x / len(x)).astype(np.float32)
    cal = LayerCalibration(hessian=h, channel_amax=np.abs(x).max(0).astype(np.float32), channel_ms=(x ** 2).mean(0))
    settings = QuantizeSettings(rounding=rounding)
    rows = error_rows(layer)
    assert rows is not None and len(rows) == ERROR_ROWS and len(set(rows.tolist())) == ERROR_ROWS
    formats = [W4A16, LowRankFormat(0.5), W8A8, W8A8_SQ]
    sampled, whole = {}, {}
    for f in formats:
        full = weight_matrix(f.effective_weight(layer, w, settings, cal), layer)
        part = f.effective_rows(layer, w, settings, cal, rows)
        np.testing.assert_allclose(part, full[rows], rtol=1e-4, atol=1e-4 * float(np.abs(full).max()))
        wm = weight_matrix(w, layer)
        whole[f.name] = output_error(wm, full, h) / output_error(wm, np.zeros_like(wm), h)
        sampled[f.name] = weight_error(layer, w, f, settings, cal)
        assert sampled[f.name] == pytest.approx(whole[f.name], rel=0.15), f.name
    assert sampled["w4a16"] > sampled["w4a16-lr0.5"] > max(sampled["w8a8"], sampled["w8a8-sq"])
