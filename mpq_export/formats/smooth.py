"""w8a8-sq: W8A8 with SmoothQuant's per-input-channel smoothing (GEMMs).

x W = (x / s) (s W): a factor s_j per input channel moves activation outliers into the weight, whose
per-output-channel INT8 scales absorb them far better than the input's one per-tensor INT8 scale does.
s_j = max|x_j|^alpha / max|W_j|^(1 - alpha) (Xiao et al., 2023); alpha is chosen per layer from the
calibration statistics (each input channel's max and mean square, GPTQ's H) as the one of least
expected output error, weight error and input error together. In the graph: Mul(x, 1/s) -> INT8 Q/DQ ->
MatMul with the INT8 weight s W; TensorRT fuses the Mul into the quantize, onnxruntime runs it as it is.
The input's threshold is the smoothed tensor's observed max, max_j(max|x_j| / s_j): smoothing removed the
outliers a clipping threshold is for (clipping it as --act-calib clips the tensor itself cost the bundled
DiT 7.5 dB).

The 8 stored bits equal w8a8's: which of the two a layer takes is decided by their errors (the expected
one, stages/format_error.py, or the measured one under --importance sensitivity).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mpq_export.formats.base import (GEMM_OPS, LayerCalibration, LayerStorage, WeightDQFormat, as_calibration,
                                     output_relative_noise)
from mpq_export.formats.inputs import INT8_INPUT, SMOOTH_PROBE, activation_scale
from mpq_export.formats.integer import W8A8
from mpq_export.formats.weights import QuantizedWeight, weight_sqnr_db

ALPHAS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # SmoothQuant's range; its default 0.5, ModelOpt's diffusers 0.8


@dataclass
class SmoothedWeight:
    """The INT8 weight s W and the smoothing factors s [K] (y = (x / s) DQ(Q(s W)))."""
    weight: QuantizedWeight  # of s W, in the weight's own layout
    s: np.ndarray  # [K]
    alpha: float
    threshold: float  # the smoothed input's |max|: its INT8 scale is threshold / 127
    reduction_axis: int

    @property
    def values(self):
        return self.weight.values

    def dequantize(self) -> np.ndarray:
        """The effective weight in the input's original units: DQ(Q(s W)) / s along K."""
        shape = [1, 1]
        shape[self.reduction_axis] = -1
        return self.weight.dequantize() / self.s.reshape(shape).astype(np.float32)


def smoothing(w_kn_absmax: np.ndarray, channel_amax: np.ndarray, alpha: float) -> np.ndarray:
    """s_j = max|x_j|^alpha / max|W_j|^(1 - alpha), with dead channels left alone (s = 1)."""
    a = np.maximum(channel_amax.astype(np.float64), 0.0)
    wmax = np.maximum(w_kn_absmax.astype(np.float64), 0.0)
    ok = (a > 0) & (wmax > 0)
    s = np.ones_like(a)
    s[ok] = a[ok] ** alpha / wmax[ok] ** (1.0 - alpha)
    return np.clip(s, 1e-4, 1e4)


class SmoothedW8A8(WeightDQFormat):
    name, weight_bits, input, stored_dtype = "w8a8-sq", 8, INT8_INPUT, "int8"
    # measured on the digits UNet: smoothing its 13 time_emb_proj layers cost 4.7 dB of final-sample PSNR
    # while the expected error preferred it
    per_sample_inputs_only = True
    summary = "INT8 weights and INT8 input with SmoothQuant's per-channel smoothing (MatMul/Gemm)"

    def applies_to(self, layer) -> bool:
        return layer.op_type in GEMM_OPS

    def quantize_weight(self, layer, w: np.ndarray, settings, cal) -> SmoothedWeight:
        cal = as_calibration(cal)
        if cal.channel_amax is None:
            raise ValueError(f"internal: {self.name} needs the per-channel input maxima of {layer.name}")
        memo = self._memo  # the error model asks twice for one layer: the same objects, held (no id reuse)
        if memo is not None and memo[0] == layer.name and memo[1] is w and memo[2] is cal and memo[3] == settings:
            return memo[4]
        q = self._at(layer, np.asarray(w, np.float32), settings, cal, self._best_alpha(layer, np.asarray(w, np.float32), cal))
        self._memo = (layer.name, w, cal, settings, q)
        return q

    _memo = None

    def _best_alpha(self, layer, w: np.ndarray, cal: LayerCalibration) -> float:
        """The alpha of least expected error, scanned cheaply: plain |max| scales rounded to nearest, and the
        weight's error weighted by H's diagonal (each candidate costs one pass over the weight, not a GPTQ
        or a K x K product: at 1536 x 6144 that is what keeps the scan to a fraction of a second)."""
        memo = self._alpha_memo  # asked by the weight's error and the input's for one layer
        if memo is not None and memo[0] == layer.name and memo[1] is w and memo[2] is cal:
            return memo[3]
        alpha = self._scan_alpha(layer, w, cal)
        self._alpha_memo = (layer.name, w, cal, alpha)
        return alpha

    _alpha_memo = None

    def _scan_alpha(self, layer, w: np.ndarray, cal: LayerCalibration) -> float:
        from mpq_export.formats.base import error_rows
        from mpq_export.formats.gptq import weight_matrix

        wm = weight_matrix(w, layer)  # [N, K]
        rows = error_rows(layer)
        # s reads every output channel's weights; the rounding error is measured on the error model's
        # sampled channels where the layer is wide (base.ERROR_ROWS), as the formats' expected errors are
        w_max = np.abs(wm).max(0).astype(np.float64)
        if rows is None:
            wm = wm.astype(np.float64)
            col_energy = sample_energy = (wm ** 2).sum(0)  # ||W_j||^2 per input channel j
        else:
            col_energy = np.einsum("nk,nk->k", wm, wm, dtype=np.float64)
            wm = wm[rows].astype(np.float64)
            sample_energy = (wm ** 2).sum(0)
        h_diag = np.diag(cal.hessian).astype(np.float64) if cal.hessian is not None else cal.channel_ms
        h_diag = h_diag if h_diag is not None else np.ones(wm.shape[1])
        ref_w = max(float((h_diag * sample_energy).sum()), 1e-30)
        ms = cal.channel_ms.astype(np.float64) if cal.channel_ms is not None else None
        ref_x = max(float((ms * col_energy).sum()), 1e-30) if ms is not None else None
        best = None
        for alpha in ALPHAS:
            s_ = smoothing(w_max, cal.channel_amax, alpha)
            sw = wm * s_[None, :]
            scale = np.maximum(np.abs(sw).max(1, keepdims=True), 1e-12) / 127.0  # per output channel
            dw = (np.clip(np.round(sw / scale), -127, 127) * scale - sw) / s_[None, :]
            err = float((h_diag * (dw ** 2).sum(0)).sum()) / ref_w
            if ref_x is not None:
                step = activation_scale(float(np.max(cal.channel_amax / s_)))
                err += float(((s_ * step) ** 2 / 12.0 * col_energy).sum()) / ref_x * _mean_inverse_step_scale(cal)
            if best is None or err < best[0]:
                best = (err, alpha)
        return best[1]

    def effective_rows(self, layer, w: np.ndarray, settings, cal, rows: np.ndarray) -> np.ndarray:
        """alpha and s from the whole weight (s reads each input channel's max over every output channel),
        the INT8 rounding on the channels `rows` alone."""
        from mpq_export.formats.base import row_subset
        from mpq_export.formats.gptq import weight_matrix

        cal, w = as_calibration(cal), np.asarray(w, np.float32)
        alpha = self._best_alpha(layer, w, cal)
        s = smoothing(np.abs(w).max(axis=1 - layer.reduction_axis), cal.channel_amax, alpha)
        sub_layer, sub_w = row_subset(layer, w, rows)
        return weight_matrix(self._at(sub_layer, sub_w, settings, cal, alpha, s).dequantize(), sub_layer)

    def _at(self, layer, w, settings, cal: LayerCalibration, alpha: float, s: np.ndarray | None = None) -> SmoothedWeight:
        axis = layer.reduction_axis
        if s is None:
            s = smoothing(np.abs(w).max(axis=1 - axis), cal.channel_amax, alpha)
        shape = [1, 1]
        shape[axis] = -1
        sw = (w * s.reshape(shape)).astype(np.float32)
        h = None
        if cal.hessian is not None:  # the quantized weight reads x / s: its H is diag(1/s) H diag(1/s)
            inv = (1.0 / s).astype(np.float64)
            h = (cal.hessian * inv[:, None] * inv[None, :]).astype(np.float32)
        qw = W8A8.quantize_weight(layer, sw, settings, h)
        threshold = float(np.max(cal.channel_amax / s)) if cal.channel_amax.size else 0.0
        return SmoothedWeight(qw, s.astype(np.float32), alpha, threshold, axis)

    @staticmethod
    def _input_error(layer, w, s: np.ndarray, threshold: float, cal: LayerCalibration) -> float:
        """Relative output error of the smoothed input's INT8 rounding: each channel's error is the step
        (threshold / 127, in smoothed units) times s_j, uniform noise of variance step^2 / 12, reaching
        the output through row j of W (base.output_relative_noise, as every format's input error)."""
        if cal.channel_ms is None or threshold <= 0:
            return 0.0
        step = activation_scale(threshold)
        pooled = output_relative_noise(layer, w, (s.astype(np.float64) * step) ** 2 / 12.0, cal)
        return pooled * _mean_inverse_step_scale(cal)

    def input_error(self, layer, w, settings, cal) -> float:
        from mpq_export.formats.base import error_rows

        cal = as_calibration(cal)
        if error_rows(layer) is None:
            q = self.quantize_weight(layer, w, settings, cal)
            return self._input_error(layer, w, q.s, q.threshold, cal)
        # a wide layer: s and the threshold need no quantized weight (its error is measured on rows)
        w = np.asarray(w, np.float32)
        s = smoothing(np.abs(w).max(axis=1 - layer.reduction_axis), cal.channel_amax,
                      self._best_alpha(layer, w, cal)).astype(np.float32)
        threshold = float(np.max(cal.channel_amax / s)) if cal.channel_amax.size else 0.0
        return self._input_error(layer, w, s, threshold, cal)

    @property
    def probe_quantizer(self):
        return SMOOTH_PROBE

    def probe_feeds(self, layer, w, quantized: SmoothedWeight, masks: dict[str, str]) -> dict:
        """The smoothed input's fake quantization, as a per-channel scale on x: s_j * threshold / 127."""
        scale = (quantized.s.astype(np.float64) * activation_scale(quantized.threshold)).astype(np.float32)
        return {masks[SMOOTH_PROBE.name]: np.array(1.0, dtype=np.float32), masks[SMOOTH_PROBE.name + ":scale"]: scale}

    def write(self, writer, layer, node, w, quantized: SmoothedWeight) -> LayerStorage:
        values, storage = self.stored_constant(quantized.weight.values)
        node.inputs[1] = writer.weight_dq(layer, w.shape, values, storage, quantized.weight)
        node.inputs[0] = writer.smoothed_input(layer, node.inputs[0], 1.0 / quantized.s, quantized.threshold)
        return LayerStorage(self.name, storage, 8, weight_sqnr_db(w, quantized.dequantize()),
                            f"alpha {quantized.alpha:g}")

    def stored_constant(self, values: np.ndarray):
        return W8A8.stored_constant(values)


def _mean_inverse_step_scale(cal: LayerCalibration) -> float:
    """The same rounding noise at every step, relative to each step's activations: the mean over the profiled
    steps of 1 / (their mean square over the pooled one), as every format's input error is averaged
    (base.Format.input_error); 1 without per-step statistics."""
    scale = cal.step_scale()
    if scale is None or not np.isfinite(scale).any():
        return 1.0
    return float(np.mean(1.0 / scale[np.isfinite(scale)]))


W8A8_SQ = SmoothedW8A8()
