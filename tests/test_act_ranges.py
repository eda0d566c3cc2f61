import numpy as np
import pytest

from mpq_export.stages.act_ranges import (ActCalibSettings, ActivationHistograms, abs_histogram, bin_edges, choose_ranges,
                                   linear_histogram)
from mpq_export.util.errors import MPQError


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


def test_histogram_bins_bracket_their_values_and_add_up():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(10_000).astype(np.float32) * 3
    x[:10] = 0.0
    c = abs_histogram(x)
    assert c.sum() == x.size and c[0] == 10  # zeros in the underflow bin
    edges = bin_edges()
    for v in np.abs(x[10:200]):
        i = int(np.nonzero(abs_histogram(np.array([v])))[0][0])
        assert edges[i] <= v < edges[i + 1]
    np.testing.assert_array_equal(abs_histogram(x[:4000]) + abs_histogram(x[4000:]), c)


def test_percentile_matches_numpy_within_one_bin():
    x = np.random.default_rng(1).laplace(size=200_000)
    for q in (99.0, 99.9, 99.99):
        got = choose_ranges(_hists([x]), ActCalibSettings(method="percentile", percentile=q)).amax["x"]
        assert got == pytest.approx(np.percentile(np.abs(x), q), rel=0.045)


@pytest.mark.parametrize("dist", ["normal", "laplace", "student3"])
def test_mse_and_entropy_beat_max_and_mse_is_near_the_best_threshold(dist):
    rng = np.random.default_rng(3)
    x = {"normal": rng.standard_normal, "laplace": lambda n: rng.laplace(size=n),
         "student3": lambda n: rng.standard_t(3, n)}[dist](300_000)
    h = _hists([x])
    err = {m: _int8_error(x, choose_ranges(h, ActCalibSettings(method=m)).amax["x"]) for m in ("max", "mse", "entropy")}
    grid = np.abs(x).max() * np.exp2(-np.linspace(0, 8, 400))
    best = min(_int8_error(x, a) for a in grid)
    assert err["mse"] <= err["max"]
    if dist != "student3":  # KL is not squared error: on heavy tails entropy clips harder than MSE would
        assert err["entropy"] <= err["max"]
    assert err["mse"] <= best * 1.10  # the histogram's choice is within 10 % of a brute-force search on raw data


def test_relative_aggregation_protects_the_quiet_step():
    rng = np.random.default_rng(4)
    loud, quiet = rng.standard_normal(50_000) * 20, rng.standard_normal(50_000) * 0.2
    h = _hists([loud, quiet])

    def mean_rel(amax):
        return np.mean([_int8_error(x, amax) / float((x ** 2).sum()) for x in (loud, quiet)])

    rel = choose_ranges(h, ActCalibSettings(method="mse", over_steps="relative")).amax["x"]
    pooled = choose_ranges(h, ActCalibSettings(method="mse", over_steps="pooled")).amax["x"]
    assert rel < pooled and mean_rel(rel) < mean_rel(pooled)


def test_linear_rebinning_keeps_the_mass():
    x = np.random.default_rng(5).exponential(size=10_000)
    lin = linear_histogram(abs_histogram(x), float(x.max()), 2048)
    assert lin.sum() == pytest.approx(x.size) and (lin >= 0).all()


def test_a_tensor_that_is_always_zero_gets_a_positive_scale():
    from mpq_export.formats.inputs import activation_scale

    for method in ("mse", "entropy", "percentile", "max"):
        r = choose_ranges(_hists([np.zeros(100)]), ActCalibSettings(method=method))
        assert r.amax["x"] == 0.0 and r.observed_max["x"] == 0.0
        assert activation_scale(r.amax["x"]) > 0  # TensorRT needs a positive scale; 0 would divide by 0


def test_bad_settings_are_one_line_errors():
    with pytest.raises(MPQError, match="--act-calib"):
        ActCalibSettings(method="kl")
    with pytest.raises(MPQError, match="--act-percentile"):
        ActCalibSettings(method="percentile", percentile=100.0)
