"""fp8: FP8 E4M3 per-output-channel weights and an FP8 E4M3 per-tensor input (TensorRT on Ada and later).

Weight scales map each channel's |max| onto 448 (times the clip ratio of least squared error when the
search finds one), values rounded to the nearest E4M3 value; with rounding "gptq", GPTQ runs on E4M3's
grid instead of the integers. The input's scale maps its observed max onto 448 (formats/inputs.py).
"""

from __future__ import annotations

import numpy as np

from mpq_export.formats.base import WeightDQFormat, as_calibration
from mpq_export.formats.inputs import FP8_INPUT
from mpq_export.formats.weights import QuantizedWeight, fp8_constant, quantize_weight_fp8, to_fp8


class Fp8Format(WeightDQFormat):
    name, weight_bits, input, stored_dtype = "fp8", 8, FP8_INPUT, "fp8"
    summary = "FP8 E4M3 per-channel weights, FP8 E4M3 per-tensor input"

    def quantize_weight(self, layer, w: np.ndarray, settings, cal) -> QuantizedWeight:
        hessian = as_calibration(cal).hessian
        qw = quantize_weight_fp8(w, layer.weight_axis, clip_search=settings.clip_search, grid=settings.clip_grid)
        if settings.rounding == "gptq" and hessian is not None:  # GPTQ on FP8's grid instead of the integers
            from mpq_export.formats.gptq import from_matrix, gptq_round, weight_matrix

            wm, sm = weight_matrix(np.asarray(w, np.float32), layer), weight_matrix(qw.scale_like(), layer)
            qw.values = from_matrix(gptq_round(wm, sm, hessian, 0, grid=to_fp8), w.shape, layer).astype(np.float32)
        return qw

    def stored_constant(self, values: np.ndarray):
        return fp8_constant(values), "fp8"


FP8 = Fp8Format()
