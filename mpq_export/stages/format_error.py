"""format_error stage: the expected error of a layer under each of its formats of equal bits.

The paper's objective (bits x importance) and the budget count stored bits only, so they cannot tell two
8-bit formats apart: INT8 (w8a8) and FP8 E4M3 (fp8). They err differently. INT8's grid is uniform: its
error is absolute, set by the largest value it must hold, so one outlier coarsens every step. FP8's grid is
logarithmic: its error is relative (3 mantissa bits, about 2^-4 of each value), so outlier-heavy tensors lose
less, while a flat, well-scaled tensor is held more finely by INT8's 255 levels. Which wins is a property of
each layer's weight and input distributions, and both are known after calibration.

For layer i and format f, with y = W x:
    e[i, f] = ||W - Q_f(W)||^2_H / ||W||^2_H  +  e_x[i, f]
the first term the relative output error of the quantized weight under the layer's input statistics H
(formats/gptq.py's, when calibration kept them; else the plain relative weight error), the second the
output error of the quantized input (Format.input_error: the noise of the streamed |x| histogram, INT8 at
the chosen clipping threshold, FP8 at the observed max / 448, carried through W to the output and averaged
over the profiled steps). The two add when the errors are independent: the relative power of dW x + W dx.
allocate.one_per_width keeps the format of least e among equal widths.

The measured scorer (`--importance sensitivity`) needs none of this: it probes each format of each layer.
"""

from __future__ import annotations

import numpy as np

from mpq_export.core.model_info import ModelInfo
from mpq_export.formats import Format, LayerCalibration, QuantizeSettings
from mpq_export.stages.act_ranges import ActivationRanges
from mpq_export.stages.calibrate import CalibrationStats
from mpq_export.util.onnx_io import iter_initializers


def weight_error(layer, w: np.ndarray, fmt: Format, settings: QuantizeSettings, cal) -> float:
    """Relative output error of the layer's weight in `fmt` (under its H when calibration kept one); on a
    wide layer, on the output channels of formats.base.error_rows."""
    from mpq_export.formats.base import as_calibration, error_rows
    from mpq_export.formats.gptq import output_error, weight_matrix

    cal = as_calibration(cal)
    rows = error_rows(layer)
    if rows is not None:
        wm, hm = weight_matrix(w, layer)[rows], fmt.effective_rows(layer, w, settings, cal, rows)
        if cal.hessian is not None:
            h = cal.hessian.astype(np.float64)

            def quad(d: np.ndarray) -> float:  # tr(D H D^T) by BLAS: at K = 6144 einsum's loop takes seconds
                d = d.astype(np.float64)
                return float(((d @ h) * d).sum())

            ref = quad(wm)
            if ref > 0:
                return quad(wm - hm) / ref
        return float(((hm - wm) ** 2).sum() / max(float((wm.astype(np.float64) ** 2).sum()), 1e-30))
    w_hat = fmt.effective_weight(layer, w, settings, cal)
    if cal.hessian is not None:
        wm, hm = weight_matrix(w, layer), weight_matrix(w_hat, layer)
        ref = output_error(wm, np.zeros_like(wm), cal.hessian)
        if ref > 0:
            return output_error(wm, hm, cal.hessian) / ref
    return float(((w_hat - w) ** 2).sum() / max(float((w.astype(np.float64) ** 2).sum()), 1e-30))


def format_error(layer, w: np.ndarray, fmt: Format, settings: QuantizeSettings, cal: LayerCalibration) -> float:
    """e[i, f]: the weight's relative output error plus the input's, the two independent."""
    return weight_error(layer, w, fmt, settings, cal) + fmt.input_error(layer, w, settings, cal)


def expected_format_error(info: ModelInfo, layer_formats: dict[str, list[Format]], stats: CalibrationStats,
                          ranges: ActivationRanges, settings: QuantizeSettings) -> dict[str, dict[str, float]]:
    """layer -> format name -> e[i, f] for the layers and formats of `layer_formats`
    (allocate.equal_bit_alternatives); weights are read one layer at a time."""
    by_name = {l.name: l for l in info.layers}
    out: dict[str, dict[str, float]] = {}
    names = list(layer_formats)
    weights = iter_initializers(info.path, [by_name[n].weight_name for n in names])
    for name, (_, w) in zip(names, weights):
        layer = by_name[name]
        cal, w = stats.for_layer(layer, ranges), w.astype(np.float32)  # one of each per layer: formats memoise on them
        out[name] = {f.name: format_error(layer, w, f, settings, cal) for f in layer_formats[name]}
    return out
