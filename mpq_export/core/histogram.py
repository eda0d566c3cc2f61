"""The |x| histogram grid calibration streams, and the expected quantization error read off it.

A fixed log2 grid (`BINS_PER_OCTAVE` bins per octave over [2^LOG2_LO, 2^LOG2_HI), one underflow bin that
holds the zeros) keeps a relative resolution of 2^(1/16) = 4.4 % at every magnitude and needs no first
pass to find a range. stages/act_ranges.py streams the histograms and chooses INT8 thresholds from them;
each format's input quantizer (formats/inputs.py) reads its expected error from them.
"""

from __future__ import annotations

import numpy as np

BINS_PER_OCTAVE = 16
LOG2_LO, LOG2_HI = -24, 24
N_BINS = (LOG2_HI - LOG2_LO) * BINS_PER_OCTAVE + 1  # bin 0: |x| < 2^LOG2_LO, zeros included
QMAX = 127  # symmetric INT8
_SUBPOINTS = 4  # points per bin at which the error model is evaluated


def bin_edges() -> np.ndarray:
    """[N_BINS + 1] edges of the |x| histogram: 0, 2^LOG2_LO, ..., 2^LOG2_HI."""
    e = np.exp2(LOG2_LO + np.arange(N_BINS, dtype=np.float64) / BINS_PER_OCTAVE)
    return np.concatenate([[0.0], e])


def _subpoints() -> tuple[np.ndarray, np.ndarray]:
    """(values [N_BINS * J], bin of each value): J log-spaced points inside each bin; bin 0 is 0."""
    edges = bin_edges()
    lo = edges[1:-1]  # lower edges of bins 1..N_BINS-1
    frac = (np.arange(_SUBPOINTS) + 0.5) / _SUBPOINTS
    pts = lo[:, None] * np.exp2(frac[None, :] / BINS_PER_OCTAVE)
    vals = np.concatenate([np.zeros(_SUBPOINTS), pts.ravel()])
    return vals, np.repeat(np.arange(N_BINS), _SUBPOINTS)


VALUES, BIN_OF = _subpoints()  # the points the error models evaluate, and the bin each lies in


def point_weights(counts: np.ndarray) -> np.ndarray:
    """The pooled histogram [..., N_BINS] spread over the evaluation points (VALUES)."""
    return counts.reshape(-1, N_BINS).sum(0)[BIN_OF] / _SUBPOINTS


def quantization_error(counts: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Expected squared INT8 error summed over a histogram, for each candidate threshold.

    counts [..., N_BINS]; returns [..., C]. Per value v and scale s = a / 127: v > a clips,
    error (v - a)^2; v <= s rounds to 0 or s, error min(v, s - v)^2; in between rounding noise s^2/12
    (the values of a bin are spread over many steps of the grid).
    """
    used = np.nonzero(counts.reshape(-1, N_BINS).sum(0))[0]
    sel = np.isin(BIN_OF, used)
    v = VALUES[sel][None, :]  # [1, P]
    w = counts[..., BIN_OF[sel]] / _SUBPOINTS  # [..., P]
    a = np.asarray(candidates, dtype=np.float64)[:, None]  # [C, 1]
    s = a / QMAX
    err = np.where(v > a, (v - a) ** 2, np.where(v <= s, np.minimum(v, s - v) ** 2, s * s / 12.0))  # [C, P]
    return w @ err.T
