"""formats: quantized weights are written at their own width (INT4 packed, two per byte)."""

import numpy as np
import pytest
from onnx import TensorProto, numpy_helper

from mpq_export.formats import FORMATS, W4A8, W4A16, W8A8, parse_format
from mpq_export.util.errors import MPQError


def test_int8_weights_are_stored_as_int8():
    v = np.arange(-8, 8, dtype=np.int64).reshape(4, 4)
    stored, dtype = W8A8.stored_constant(v)
    assert dtype == "int8" and stored.dtype == np.int8 and np.array_equal(stored, v)


def test_int4_weights_are_packed_and_round_trip_with_an_odd_count():
    rng = np.random.default_rng(0)
    v = rng.integers(-8, 8, size=(3, 5))  # 15 values: the last byte holds one nibble
    for fmt in (W4A8, W4A16):
        stored, dtype = fmt.stored_constant(v)
        tensor = stored.tensor
        assert dtype == "int4" and tensor.data_type == TensorProto.INT4
        assert len(tensor.raw_data) == 8  # ceil(15 / 2) bytes: 4 bits per weight in the file
        assert np.array_equal(numpy_helper.to_array(tensor).astype(np.int8), v)


def test_formats_parse_by_name_and_bad_names_are_one_line_errors():
    for f in FORMATS:
        assert parse_format(f.name) is f
        assert f.quantized == (f.weight_bits < 16)
    with pytest.raises(MPQError, match="unknown format 'w2a8'"):
        parse_format("w2a8")


def _two_step_calibration(x_steps):
    """A GEMM input profiled at two steps, with the per-step histograms calibration keeps."""
    from mpq_export.formats import LayerCalibration
    from mpq_export.stages.act_ranges import ActivationHistograms

    hist = ActivationHistograms.empty(["x"], len(x_steps))
    for k, x in enumerate(x_steps):
        hist.add("x", k, x)
    xs = np.concatenate(x_steps).astype(np.float64)
    amax = float(np.abs(xs).max())
    return LayerCalibration(channel_ms=(xs ** 2).mean(0), counts=hist.counts[0].sum(0), energy=float(hist.sumsq[0].sum()),
                            thresholds={"int8": amax, "fp8": amax}, step_counts=hist.counts[0],
                            step_energy=hist.sumsq[0]), amax


def test_input_error_is_the_mean_over_steps_of_each_steps_output_error():
    """One INT8 step for the whole trajectory is a larger relative error at a step of small activations: the
    model averages each step's output error (as the final sample weighs the steps), matching the quantized
    layer's, where pooling the steps would hide the small step under the large one. FP8's error is relative:
    it does not grow at the small step."""
    from mpq_export.core.model_info import QuantLayer
    from mpq_export.formats import FP8
    from mpq_export.formats.weights import to_fp8

    rng = np.random.default_rng(3)
    k, n = 64, 32
    layer = QuantLayer(name="p", node_name="p", op_type="MatMul", weight_name="w", weight_shape=(k, n), params=k * n,
                       activation_input="x", output="y", weight_axis=1, reduction_axis=0)
    w = rng.standard_normal((k, n)).astype(np.float32)
    steps = [rng.standard_normal((4096, k)).astype(np.float32) * s for s in (4.0, 0.05)]
    cal, amax = _two_step_calibration(steps)

    def real(quantize):
        return float(np.mean([(((quantize(x) - x) @ w) ** 2).sum() / ((x @ w) ** 2).sum() for x in steps]))

    s8 = amax / 127
    int8_real = real(lambda x: np.clip(np.round(x / s8), -127, 127) * s8)
    fp8_real = real(lambda x: to_fp8(x / (amax / 448)) * (amax / 448))
    int8_model = W8A8.input_error(layer, w, None, cal)
    assert int8_model == pytest.approx(int8_real, rel=0.2)
    assert FP8.input_error(layer, w, None, cal) == pytest.approx(fp8_real, rel=0.35)
    pooled = W8A8.input_error(layer, w, None, type(cal)(**{**cal.__dict__, "step_counts": None, "step_energy": None}))
    assert pooled < int8_real / 10  # pooled, the small step is invisible
