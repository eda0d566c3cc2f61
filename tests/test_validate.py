import numpy as np
import pytest

from mpq_export.util.metrics import cosine, psnr_db, sqnr_db


def test_metrics_on_constructed_arrays():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(100_000)
    noise = rng.standard_normal(100_000) * 0.01  # signal power 1, noise power 1e-4: 40 dB
    assert sqnr_db(x, x + noise) == pytest.approx(40.0, abs=0.1)
    assert psnr_db(x, x + noise, peak=2.0) == pytest.approx(10 * np.log10(4 / 1e-4), abs=0.1)
    assert cosine(x, 3 * x) == pytest.approx(1.0)
    assert cosine(x, -x) == pytest.approx(-1.0)
    assert sqnr_db(x, x) > 250  # identical: capped, not infinite
