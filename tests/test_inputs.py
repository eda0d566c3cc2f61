"""inputs: each input quantizer's expected error on a histogram matches its real error, and FP8 beats INT8
on heavy tails while INT8 wins on flat inputs."""

import numpy as np
import pytest

from mpq_export.core.histogram import quantization_error
from mpq_export.formats import FP8, W8A8
from mpq_export.formats.inputs import fp8_quantization_error
from mpq_export.formats.weights import to_fp8
from mpq_export.formats.base import LayerCalibration
from mpq_export.stages.act_ranges import ActivationHistograms


def test_histogram_error_models_match_the_quantizers():
    """The expected errors of act_ranges (from the |x| histogram) agree with quantizing the values."""
    rng = np.random.default_rng(2)
    x = rng.standard_t(df=3, size=200_000).astype(np.float32)
    h = ActivationHistograms.empty(["x"], 1)
    h.add("x", 0, x)
    amax = float(np.abs(x).max())
    s = amax / 448
    true_fp8 = float(((to_fp8(x / s) * s - x) ** 2).sum())
    assert fp8_quantization_error(h.counts[0], amax) == pytest.approx(true_fp8, rel=0.15)
    t = amax / 4
    s8 = t / 127
    true_int8 = float(((np.clip(np.round(x / s8), -127, 127) * s8 - x) ** 2).sum())
    assert float(quantization_error(h.counts[0].sum(0), np.array([t]))[0]) == pytest.approx(true_int8, rel=0.15)
    # heavy tails at the full range: FP8 wins; a flat distribution: INT8 wins
    flat = ActivationHistograms.empty(["x"], 1)
    flat.add("x", 0, rng.uniform(-1, 1, 200_000).astype(np.float32))
    for hist, better in ((h, FP8), (flat, W8A8)):
        observed = float(hist.amax.max())
        cal = LayerCalibration(counts=hist.counts[0].sum(0), energy=float(hist.sumsq.sum()),
                               thresholds={"int8": observed, "fp8": observed})
        errs = {f: f.input_error(None, None, None, cal) for f in (W8A8, FP8)}
        assert min(errs, key=errs.get) is better, errs
