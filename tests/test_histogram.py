"""histogram: the expected INT8 error read off the streamed |x| histogram matches real quantization."""

import numpy as np

from mpq_export.core.histogram import quantization_error
from mpq_export.stages.act_ranges import ActivationHistograms, abs_histogram


def _int8_error(x: np.ndarray, amax: float) -> float:
    """The real squared error of symmetric INT8 fake quantization at threshold amax."""
    s = amax / 127
    return float(((np.clip(np.round(x / s), -127, 127) * s - x) ** 2).sum())


def _hists(steps: list[np.ndarray]) -> ActivationHistograms:
    h = ActivationHistograms.empty(["x"], len(steps))
    for k, x in enumerate(steps):
        for chunk in np.array_split(x, 3):  # streamed in chunks, as calibration does
            h.add("x", k, chunk)
    return h


def test_error_model_matches_real_quantization_error():
    x = np.random.default_rng(2).standard_normal(100_000)
    cand = np.array([1.0, 2.0, 3.0, 4.0, np.abs(x).max()])
    model = quantization_error(abs_histogram(x), cand)
    real = np.array([_int8_error(x, a) for a in cand])
    np.testing.assert_allclose(model, real, rtol=0.15)
