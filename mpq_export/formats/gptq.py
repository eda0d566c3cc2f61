"""GPTQ (Frantar et al., 2023): weight rounding that minimises a layer's output error, not each weight's.

Round-to-nearest minimises each weight's own error; what matters is the layer's output error
||X W^T - X Q^T||^2 over the inputs X the layer really sees. GPTQ quantizes one input column at a
time and spreads each column's rounding error over the columns not yet quantized, weighted by the
inverse of H = X^T X (the input statistics calibration gathers, stages/rounding.py). Formats call it
with their own grid (integers in [-qmax, qmax], or FP8's values).
"""

from __future__ import annotations

import numpy as np

ROUNDINGS = ("nearest", "gptq")
ROUNDING_VERSION = 4  # bumped when the integers a rounding writes change (results cached on disk key on it)
DEFAULT_ROUNDING = "gptq"  # better final samples than nearest on both trained models (docs/quality.md)
DAMP = 0.01  # diagonal damping, a fraction of the mean diagonal (GPTQ's default)
# INT4 per-channel weights: each row's scale (from the weight-MSE clip search) times each of these,
# GPTQ at each, the least output error wins (gptq_scale_search). The weight-MSE clip ignores how GPTQ
# spreads error and which inputs matter; the output error sees both.
SCALE_MULTIPLIERS = (0.8, 0.85, 0.9, 0.95, 1.0, 1.05, 1.1)


def weight_matrix(w: np.ndarray, layer) -> np.ndarray:
    """The weight as [output channels, K] in the column order of `layer_rows`."""
    if layer.op_type == "Conv":
        return w.reshape(w.shape[0], -1)
    return w if layer.reduction_axis == 1 else w.T  # MatMul [K, N] / Gemm [K, N] -> [N, K]; Gemm transB [N, K]


def from_matrix(m: np.ndarray, w_shape: tuple, layer) -> np.ndarray:
    if layer.op_type == "Conv":
        return m.reshape(w_shape)
    return m if layer.reduction_axis == 1 else m.T


def gptq_round(w: np.ndarray, scale: np.ndarray, h: np.ndarray, qmax: int, damp: float = DAMP,
               block: int = 128, act_order: bool = False, grid=None) -> np.ndarray:
    """Integers q [R, K] for weights w [R, K] at fixed scales [R, K], minimising the output error under H [K, K].
    `grid(v)`: the stored value nearest v, when the grid is not the integers in [-qmax, qmax] (FP8's)."""
    return _gptq(w, scale, h, qmax, damp, block, act_order, grid)[0]


def gptq_scale_search(w: np.ndarray, scale: np.ndarray, h: np.ndarray, qmax: int,
                      multipliers: tuple[float, ...] = SCALE_MULTIPLIERS) -> tuple[np.ndarray, np.ndarray]:
    """GPTQ (act order) at each row's scales times each multiplier; per row, the integers and multiplier
    with the least output error. Rows are independent in GPTQ, so all candidates run as one stacked problem
    (one Cholesky, one column loop) and GPTQ's own accumulated loss, which equals the row's output
    error under the damped H, picks the winner: no extra pass. Returns (q [R, K], multiplier [R])."""
    r = w.shape[0]
    m = np.asarray(multipliers, dtype=np.float64)
    ws = np.tile(np.asarray(w, np.float64), (len(m), 1))
    ss = np.concatenate([np.asarray(scale, np.float64) * x for x in m])
    q, loss = _gptq(ws, ss, h, qmax, DAMP, 128, True)
    best = np.argmin(loss.reshape(len(m), r), axis=0)  # first (smallest) multiplier on ties
    rows = best * r + np.arange(r)
    return q[rows], m[best]


def _gptq(w: np.ndarray, scale: np.ndarray, h: np.ndarray, qmax: int, damp: float, block: int,
          act_order: bool, grid=None) -> tuple[np.ndarray, np.ndarray]:
    """(q, per-row loss). The loss sum_i ((w_i - q_i s_i) / U_ii)^2 equals (w - q s) H' (w - q s)^T for
    the damped H' (the sequential OBS identity GPTQ rests on). act_order quantizes the columns of the
    largest H diagonal (most input energy) first, while the most columns remain to absorb their error
    (GPTQ's "desc_act"). Used for INT4 per channel only, with the scale search: it helped there on both
    trained models and not at W8 (docs/quality.md)."""
    if grid is None:
        def grid(v):
            return np.clip(np.round(v), -qmax, qmax)
    w = np.asarray(w, dtype=np.float64).copy()
    scale = np.asarray(scale, dtype=np.float64)
    r, k = w.shape
    h = h.astype(np.float64).copy()
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    perm = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(k)
    w, scale, h = w[:, perm], scale[:, perm], h[np.ix_(perm, perm)]
    h[np.diag_indices(k)] += damp * float(np.mean(np.diag(h)))
    try:
        hinv = np.linalg.cholesky(np.linalg.inv(h)).T  # upper: Hinv = U^T U
    except np.linalg.LinAlgError:
        q = grid(w / scale)
        d = w - q * scale
        inv = np.argsort(perm)
        return q[:, inv], np.einsum("ik,kl,il->i", d, h, d)
    q = np.zeros_like(w)
    loss = np.zeros(r)
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        w1 = w[:, i1:i2].copy()
        err1 = np.zeros_like(w1)
        u = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            s = scale[:, i1 + i]
            qi = grid(w1[:, i] / s)
            q[:, i1 + i] = qi
            e = (w1[:, i] - qi * s) / u[i, i]
            loss += e * e
            w1[:, i:] -= np.outer(e, u[i, i:])
            err1[:, i] = e
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return q[:, np.argsort(perm)], loss


def output_error(w: np.ndarray, w_hat: np.ndarray, h: np.ndarray) -> float:
    """tr((W - W^) H (W - W^)^T): the layer's output error under input statistics H."""
    d = (w - w_hat).astype(np.float64)
    return float(np.einsum("ik,kl,il->", d, h, d))
