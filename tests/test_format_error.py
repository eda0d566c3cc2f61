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
