"""Input quantizers: how a format quantizes the activation a layer reads (one static scale per tensor).

A format names one of these (or none: the input stays float). Each knows which calibrated threshold its
scale maps onto the top of its grid, the Q/DQ constants it writes, the fake-quant branch the sensitivity
probes switch on, and its expected error on a streamed |x| histogram (core/histogram.py), which the
choice between formats of equal bits reads (stages/format_error.py).
"""

from __future__ import annotations

import numpy as np

from mpq_export.core.histogram import VALUES, point_weights, quantization_error
from mpq_export.formats.weights import FP8_MAX, fp8_constant


class InputQuantizer:
    name: str = ""
    tag: str = ""  # suffix of the tensors and nodes it writes (one tensor may get a quantizer of each kind)
    fuses_residual_add = False  # TensorRT fuses a residual Add into a conv whose input is this kind
    min_opset = 13  # the ONNX opset its QuantizeLinear / DequantizeLinear need
    per_channel_probe = False  # its probe branch takes a per-channel scale fed per probe (a smoothed input)
    relative_error = False  # its error grows with each value (a float grid), rather than one step for all

    def threshold(self, ranges, tensor: str) -> float:
        """The |x| its scale maps onto the top of its grid, from the run's ActivationRanges."""
        raise NotImplementedError

    def scale(self, threshold: float) -> float:
        raise NotImplementedError

    def zero_point(self, target):
        """The zero point's values (gs.Constant) on `target`."""
        raise NotImplementedError

    def probe_zero_point(self, name: str):
        """A zero-point TensorProto for the sensitivity probes' fake-quant branch (an FP32 graph)."""
        raise NotImplementedError

    def expected_error(self, counts: np.ndarray, threshold: float) -> float:
        """Expected squared error summed over the histogram counts [..., N_BINS]."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<input {self.name}>"


class Int8Input(InputQuantizer):
    """Symmetric INT8 per tensor, scale = threshold / 127 (the threshold chosen by --act-calib)."""
    name, tag, fuses_residual_add = "int8", "", True

    def threshold(self, ranges, tensor: str) -> float:
        return ranges.amax[tensor]

    def scale(self, threshold: float) -> float:
        return activation_scale(threshold)

    def zero_point(self, target):
        return target.activation_zero_point  # INT8 0 (TensorRT) or UINT8 128 (onnxruntime's kernels)

    def probe_zero_point(self, name: str):
        from onnx import numpy_helper

        return numpy_helper.from_array(np.array(0, np.int8), name)

    def expected_error(self, counts: np.ndarray, threshold: float) -> float:
        return float(quantization_error(counts, np.array([threshold]))[0])


class Fp8Input(InputQuantizer):
    """FP8 E4M3 per tensor, the observed max mapped onto 448: E4M3's error is relative, so clipping rarely
    pays."""
    name, tag, min_opset, relative_error = "fp8", "_fp8", 19, True

    def threshold(self, ranges, tensor: str) -> float:
        return ranges.observed_max[tensor]

    def scale(self, threshold: float) -> float:
        return max(float(threshold), 1e-6) / FP8_MAX

    def zero_point(self, target):
        return fp8_constant(np.zeros(()))  # graph surgeon keeps an ONNX type it has no NumPy type for

    def probe_zero_point(self, name: str):
        from onnx import TensorProto, helper

        return helper.make_tensor(name, TensorProto.FLOAT8E4M3FN, [], [0.0])

    def expected_error(self, counts: np.ndarray, threshold: float) -> float:
        """E4M3 spaces its values 2^(e - 3) apart in the octave [2^e, 2^(e+1)) for e >= -6 and 2^-9 below
        (subnormals); a value v of the scaled magnitude u = v / s rounds with noise (spacing * s)^2 / 12,
        values under half the smallest subnormal become 0 (error v^2), values past 448 clip."""
        return fp8_quantization_error(counts, threshold)


def fp8_quantization_error(counts: np.ndarray, amax: float) -> float:
    """Expected squared FP8 E4M3 error summed over a histogram [..., N_BINS], for scale amax / 448."""
    if amax <= 0:
        return 0.0
    s = amax / FP8_MAX
    w = point_weights(counts)
    u = VALUES / s
    spacing = np.exp2(np.maximum(np.floor(np.log2(np.maximum(u, 2.0 ** -30))), -6.0) - 3.0)
    err = np.where(u > FP8_MAX, (VALUES - amax) ** 2,
                   np.where(u < 2.0 ** -10, VALUES ** 2, (spacing * s) ** 2 / 12.0))
    return float(w @ err)


def activation_scale(amax: float) -> float:
    """INT8 per-tensor symmetric scale of clipping threshold `amax` (act_ranges); strictly positive
    (a TensorRT rule, and 0 would divide by 0)."""
    return max(float(amax), 1e-6) / 127.0


class SmoothedInt8Probe(Int8Input):
    """The probes' stand-in for INT8 on a smoothed input x / s (formats/smooth.py): one per-tensor INT8 scale
    on x / s is a per-channel scale s_j * step on x, fed per probe (the factors depend on the layer's weight)."""
    name, tag, per_channel_probe = "int8-smooth", "_smooth", True


INT8_INPUT = Int8Input()
FP8_INPUT = Fp8Input()
SMOOTH_PROBE = SmoothedInt8Probe()
INPUT_QUANTIZERS = (INT8_INPUT, FP8_INPUT, SMOOTH_PROBE)

