"""weights: symmetric integer grids per channel or in blocks along K, with the MSE clip search."""

import numpy as np

from mpq_export.formats.weights import quantize_weight


def _mse(w, qw):
    return float(((qw.dequantize() - w) ** 2).mean())


def test_mse_clip_search_lowers_weight_error_at_4_bits():
    rng = np.random.default_rng(0)
    w = rng.standard_t(df=3, size=(64, 32, 3, 3)).astype(np.float32)  # heavy tails, as real conv weights
    plain = quantize_weight(w, 4, axis=0, clip_search=False)
    searched = quantize_weight(w, 4, axis=0, clip_search=True)
    assert _mse(w, searched) < 0.85 * _mse(w, plain)


def test_weight_error_shrinks_with_more_bits_and_values_fit_their_range():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((256, 48)).astype(np.float32)
    q4 = quantize_weight(w, 4, axis=1, block_axis=0, block_size=128)
    q8 = quantize_weight(w, 8, axis=1)
    assert _mse(w, q8) < _mse(w, q4) / 50
    assert q4.values.min() >= -7 and q4.values.max() <= 7
    assert q4.scale.shape == (2, 48)  # one scale per block of 128 along K, per output channel
    assert q8.scale.shape == (48,)
    # Gemm with transB: weight [N, K], blocks along axis 1
    qt = quantize_weight(w.T.copy(), 4, axis=0, block_axis=1, block_size=128)
    assert qt.scale.shape == (48, 2)
    np.testing.assert_allclose(qt.dequantize(), q4.dequantize().T, rtol=1e-6)


def test_partial_last_block():
    w = np.random.default_rng(2).standard_normal((200, 8)).astype(np.float32)
    q = quantize_weight(w, 4, axis=1, block_axis=0, block_size=128)
    assert q.scale.shape == (2, 8) and q.dequantize().shape == w.shape
