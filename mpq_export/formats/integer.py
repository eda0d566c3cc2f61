"""Integer formats: symmetric INT8 or INT4 weights, the input INT8 or float.

w8a8   INT8 per-output-channel weights, INT8 per-tensor input
w4a8   INT4 per-output-channel weights (convolutions), INT8 per-tensor input
w4a16  INT4 weight-only, blocks of --block-size along K (MatMul/Gemm), input float

Scales come from a mean-squared-error clip search per channel or block; with rounding "gptq" the
integers minimise the layer's output error under its input statistics, and INT4 per-channel weights
also choose each channel's scale by that error (formats/gptq.py; docs/design.md, "Weight rounding").
"""

from __future__ import annotations

import numpy as np

from mpq_export.core.choices import Switch
from mpq_export.formats.base import GEMM_OPS, WeightDQFormat, as_calibration
from mpq_export.formats.inputs import INT8_INPUT, InputQuantizer
from mpq_export.formats.weights import QuantizedWeight, int4_constant, quantize_weight


class IntegerFormat(WeightDQFormat):
    def __init__(self, name: str, weight_bits: int, input: InputQuantizer | None, summary: str):
        self.name, self.weight_bits, self.input, self.summary = name, weight_bits, input, summary
        self.stored_dtype = "int8" if weight_bits == 8 else "int4"

    def integer_bits(self, layer, settings) -> int:
        """The integer range's width: one bit less for the W8A8 GEMMs of --reduce-range (onnxruntime's x86
        integer GEMM without VNNI), stored as INT8 all the same."""
        if settings.reduce_range is Switch.YES and self.weight_bits == 8 and self.input is not None and layer.op_type in GEMM_OPS:
            return 7
        return self.weight_bits

    def quantize_weight(self, layer, w: np.ndarray, settings, cal) -> QuantizedWeight:
        hessian = as_calibration(cal).hessian
        bits = self.integer_bits(layer, settings)
        if self.weight_bits == 4 and layer.op_type in GEMM_OPS:  # INT4 GEMM weights: blocks along K
            qw = quantize_weight(w, 4, layer.weight_axis, block_axis=layer.reduction_axis,
                                 block_size=settings.block_size, clip_search=settings.clip_search,
                                 grid=settings.clip_grid)
        else:
            qw = quantize_weight(w, bits, layer.weight_axis, clip_search=settings.clip_search, grid=settings.clip_grid)
        if settings.rounding == "gptq" and hessian is not None:
            from mpq_export.formats.gptq import from_matrix, gptq_round, gptq_scale_search, weight_matrix

            qmax = 2 ** (bits - 1) - 1
            wm, sm = weight_matrix(np.asarray(w, np.float32), layer), weight_matrix(qw.scale_like(), layer)
            if self.weight_bits == 4 and qw.block_size is None:  # INT4 per channel: the output error
                # chooses each channel's scale too (gptq.py); INT4 blocks keep plain GPTQ, where the
                # search did not help (docs/design.md, "Weight rounding")
                q, mult = gptq_scale_search(wm, sm, hessian, qmax)
                qw.scale = (qw.scale * mult).astype(np.float32)
            else:
                q = gptq_round(wm, sm, hessian, qmax)
            qw.values = from_matrix(q, w.shape, layer).astype(np.int8)
        return qw

    def stored_constant(self, values: np.ndarray):
        if self.weight_bits == 8:
            return values.astype(np.int8), "int8"
        return int4_constant(values), "int4"


W8A8 = IntegerFormat("w8a8", 8, INT8_INPUT, "INT8 per-channel weights, INT8 per-tensor input")
W4A8 = IntegerFormat("w4a8", 4, INT8_INPUT, "INT4 per-channel weights (convolutions), INT8 per-tensor input")
W4A16 = IntegerFormat("w4a16", 4, None, "INT4 weight-only, blocks along K (MatMul/Gemm), float input")
