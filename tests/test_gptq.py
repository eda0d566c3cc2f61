"""gptq: GPTQ's integers lower a layer's output error at the same scales, its loss is that error, and the
INT4 per-channel scale search never loses to its starting scales."""

import numpy as np
import pytest

from mpq_export.formats.gptq import DAMP, SCALE_MULTIPLIERS, _gptq, gptq_round, gptq_scale_search, output_error  # noqa: F401
from mpq_export.formats.weights import quantize_weight


def _correlated_inputs(rng, rows, k):
    mix = rng.standard_normal((k, k)) / np.sqrt(k)
    return (rng.standard_normal((rows, k)) * np.linspace(0.1, 3, k)) @ mix


@pytest.mark.parametrize("act_order", [True, False])
@pytest.mark.parametrize("bits", [4, 8])
def test_gptq_lowers_the_output_error_at_the_same_scales(bits, act_order):
    rng = np.random.default_rng(0)
    x = _correlated_inputs(rng, 4000, 96)
    w = rng.standard_normal((32, 96)).astype(np.float32)
    h = x.T @ x
    qw = quantize_weight(w, bits, axis=0)
    qmax = 2 ** (bits - 1) - 1
    q = gptq_round(w, qw.scale_like(), h, qmax, act_order=act_order)
    assert np.abs(q).max() <= qmax and np.allclose(q, np.round(q))
    rtn = output_error(w, qw.dequantize(), h)
    gptq = output_error(w, q * qw.scale_like(), h)
    assert gptq < 0.8 * rtn, (gptq, rtn)


def test_gptq_loss_is_the_output_error_under_the_damped_hessian():
    """The per-row loss the scale search ranks by is each row's exact output error (in the original
    column order, act order or not), so choosing by it needs no second pass."""
    rng = np.random.default_rng(2)
    x = _correlated_inputs(rng, 2000, 40)
    w = rng.standard_normal((6, 40))
    h = x.T @ x
    s = quantize_weight(w, 4, axis=0).scale_like()
    damped = h + DAMP * np.mean(np.diag(h)) * np.eye(40)
    for act_order in (True, False):
        q, loss = _gptq(w, s, h, 7, DAMP, 16, act_order)
        d = w - q * s
        np.testing.assert_allclose(loss, np.einsum("ik,kl,il->i", d, damped, d), rtol=1e-9)


def test_scale_search_never_loses_to_the_starting_scales():
    """Multiplier 1 is a candidate and rows are independent in GPTQ, so every row ends with at most the
    error it had at the starting scales; on correlated inputs some rows pick another multiplier."""
    rng = np.random.default_rng(3)
    x = _correlated_inputs(rng, 4000, 72)
    w = rng.standard_normal((24, 72)) * np.linspace(0.2, 2, 72)
    h = x.T @ x
    s = quantize_weight(w, 4, axis=0).scale_like()
    q, mult = gptq_scale_search(w, s, h, 7)
    assert set(np.unique(mult)) <= set(SCALE_MULTIPLIERS) and np.any(mult != 1.0)
    damped = h + DAMP * np.mean(np.diag(h)) * np.eye(72)
    q1 = gptq_round(w, s, h, 7, act_order=True)  # the search runs GPTQ in act order
    row_err = lambda q_, s_: np.einsum("ik,kl,il->i", w - q_ * s_, damped, w - q_ * s_)  # noqa: E731
    assert np.all(row_err(q, s * mult[:, None]) <= row_err(q1, s) * (1 + 1e-9))
    assert row_err(q, s * mult[:, None]).sum() < 0.97 * row_err(q1, s).sum()
