"""Activation ranges: the INT8 clipping threshold of every quantized activation tensor.

Calibration streams, per activation tensor and per profiled timestep, a histogram of |x| on a
fixed log2 grid (`BINS_PER_OCTAVE` bins per octave over [2^LOG2_LO, 2^LOG2_HI), one underflow bin
that holds the zeros), the exact max |x| and the energy sum x^2. Histograms of chunks and steps
add up, so memory is independent of the batch and of the resolution, and raw activations are never
kept. The fixed grid needs no first pass to find a range (TensorRT's legacy calibrator and
ModelOpt re-bin when the range grows) and keeps a relative resolution of 2^(1/16) = 4.4 % at every
magnitude, which is what a clipping threshold needs.

A threshold `amax` becomes the per-tensor symmetric scale amax / 127 (quantize.activation_scale).
Methods (`ActCalibSettings.method`):
  max         the largest |x| over all profiled steps (the old behaviour; outliers set the step)
  percentile  the `percentile`-th percentile of |x| pooled over steps
  entropy     TensorRT's legacy entropy calibrator (min KL between the 2048-bin reference and its
              128-level quantization) on the pooled histogram, re-binned linearly
  mse         the threshold minimising the expected squared quantization error (rounding inside
              the range, clipping outside), aggregated over timesteps as chosen by `over_steps`:
              "pooled" (default) minimises the error summed over all steps; "relative" minimises the
              mean over steps of error / signal energy, so a step whose activations are small counts
              as much as one whose activations are large. Measured on both trained models, pooled
              was as good or slightly better (within a standard error), so it is the default.
Which one is the default is decided by docs/quality.md (measured on both trained models).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mpq_export.core.histogram import (BINS_PER_OCTAVE, LOG2_HI, LOG2_LO, N_BINS, bin_edges,  # noqa: F401
                                      quantization_error)
from mpq_export.util.errors import MPQError, require_number

ACT_CALIB_METHODS = ("mse", "entropy", "percentile", "max")
DEFAULT_PERCENTILE = 99.99
DEFAULT_ACT_CALIB = "mse"
OVER_STEPS = ("relative", "pooled")


@dataclass(frozen=True)
class ActCalibSettings:
    method: str = DEFAULT_ACT_CALIB
    percentile: float | None = None  # method "percentile" only (None: DEFAULT_PERCENTILE)
    over_steps: str = "pooled"  # for method "mse"; pooled measured >= relative on both models (docs/quality.md)

    def __post_init__(self):
        if self.method not in ACT_CALIB_METHODS:
            raise MPQError(f"--act-calib must be one of {', '.join(ACT_CALIB_METHODS)}, got '{self.method}'")
        if self.percentile is not None:
            if self.method != "percentile":  # it would be ignored, and the user believes it applied
                raise MPQError(f"--act-percentile is used only with --act-calib percentile (this run: --act-calib "
                               f"{self.method}); add --act-calib percentile or drop --act-percentile")
            if not (50.0 <= require_number(self.percentile, "--act-percentile") < 100.0):
                raise MPQError(f"--act-percentile must be in [50, 100), got {self.percentile:g}")
        if self.over_steps not in OVER_STEPS:
            raise MPQError(f"over_steps must be one of {', '.join(OVER_STEPS)}, got '{self.over_steps}'")


_SLICE = 1 << 20  # values reduced per pass: scratch stays small and is reused, not allocated per tensor


class _Scratch:
    """Reusable buffers for the histogram passes. A fresh array per tensor costs more than the
    arithmetic: each large allocation is new pages, and every page faults on first touch."""

    def __init__(self):
        self.f32 = np.empty(0, np.float32)
        self.idx = np.empty(0, np.intp)

    def get(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if self.f32.size < n:
            self.f32, self.idx = np.empty(n, np.float32), np.empty(n, np.intp)
        return self.f32[:n], self.idx[:n]


def _bin_counts(v: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Counts of the |x| values in `v` (float32, overwritten) on the fixed log2 grid; `idx` is scratch."""
    # in place: log2(0) = -inf and subnormals (< 2^-126) clip to bin 0, below the grid's 2^-24;
    # after clipping at 0 truncation is floor
    with np.errstate(divide="ignore"):
        np.log2(v, out=v)
    v -= LOG2_LO
    v *= BINS_PER_OCTAVE
    v += 1
    np.clip(v, 0, N_BINS - 1, out=v)
    idx[...] = v  # truncating cast into a reused buffer (bincount wants intp; astype would allocate)
    return np.bincount(idx, minlength=N_BINS)


def abs_histogram(x: np.ndarray, is_abs: bool = False) -> np.ndarray:
    """Counts of |x| on the fixed log2 grid (float64, [N_BINS]); values beyond the grid fall in the end bins."""
    a = np.asarray(x, dtype=np.float32).ravel()
    v = np.abs(a) if not is_abs else a.copy()
    return _bin_counts(v, np.empty(v.size, np.intp)).astype(np.float64)


@dataclass
class ActivationHistograms:
    """Per activation tensor and profiled step: |x| histogram, max |x|, sum of x^2 (all mergeable)."""
    names: list[str]
    counts: np.ndarray  # [A, K, N_BINS] float64
    amax: np.ndarray  # [A, K] float64
    sumsq: np.ndarray  # [A, K] float64
    _index: dict[str, int] = field(init=False, repr=False, default_factory=dict)
    _scratch: _Scratch = field(init=False, repr=False, compare=False, default_factory=_Scratch)  # reused per tensor

    def __post_init__(self):
        self._index = {n: i for i, n in enumerate(self.names)}

    @classmethod
    def empty(cls, names: list[str], steps: int) -> "ActivationHistograms":
        a = len(names)
        return cls(list(names), np.zeros((a, steps, N_BINS)), np.zeros((a, steps)), np.zeros((a, steps)))

    def __contains__(self, name: str) -> bool:
        return name in self._index

    def add(self, name: str, step: int, x: np.ndarray) -> None:
        i = self._index[name]
        flat = np.asarray(x, dtype=np.float32).ravel()
        for start in range(0, flat.size, _SLICE):  # histogram, max and energy read one |x| slice
            part = flat[start: start + _SLICE]
            a, idx = self._scratch.get(part.size)
            # energy by BLAS dot in float32 (a relative error ~1e-6 here), far cheaper than squaring
            # into a buffer and summing in float64
            self.sumsq[i, step] += float(np.vdot(part, part))
            np.abs(part, out=a)
            self.amax[i, step] = max(self.amax[i, step], float(a.max()))
            self.counts[i, step] += _bin_counts(a, idx)


@dataclass
class ActivationRanges:
    """The chosen INT8 clipping threshold per activation tensor, and how it was chosen."""
    amax: dict[str, float]  # tensor -> threshold (scale = amax / 127)
    observed_max: dict[str, float]  # tensor -> max |x| seen over all profiled steps
    settings: ActCalibSettings

    def clipped_fraction(self) -> float:
        """Mean over tensors of threshold / observed max (1.0: nothing clipped)."""
        r = [self.amax[n] / self.observed_max[n] for n in self.amax if self.observed_max[n] > 0]
        return float(np.mean(r)) if r else 1.0


def _candidates(amax: float) -> np.ndarray:
    """Thresholds to try: the grid's edges from amax / 2^8 up to amax, and amax itself."""
    if amax <= 0:
        return np.array([1e-6])
    edges = bin_edges()
    c = edges[(edges >= amax / 256.0) & (edges < amax)]
    return np.concatenate([c, [amax]])


def _mse_threshold(counts: np.ndarray, amax: np.ndarray, sumsq: np.ndarray, over_steps: str) -> float:
    """counts [K, N_BINS], amax [K], sumsq [K] of one tensor."""
    cand = _candidates(float(amax.max()))
    err = quantization_error(counts, cand)  # [K, C]
    if over_steps == "relative":
        live = sumsq > 0
        if not live.any():
            return float(amax.max())
        total = (err[live] / sumsq[live, None]).mean(0)
    else:
        total = err.sum(0)
    return float(cand[int(np.argmin(total))])


def _percentile_threshold(counts: np.ndarray, amax: float, q: float) -> float:
    pooled = counts.sum(0)
    n = pooled.sum()
    if n == 0 or amax <= 0:
        return max(amax, 0.0)
    cdf = np.cumsum(pooled) / n
    edges = bin_edges()
    i = int(np.searchsorted(cdf, q / 100.0))
    i = min(i, N_BINS - 1)
    # interpolate inside the bin (geometric: the grid is log-spaced)
    prev = cdf[i - 1] if i > 0 else 0.0
    frac = 0.0 if cdf[i] <= prev else (q / 100.0 - prev) / (cdf[i] - prev)
    lo, hi = edges[i], edges[i + 1]
    val = lo + frac * (hi - lo) if lo == 0 else lo * (hi / lo) ** frac
    return float(min(val, amax))


def linear_histogram(counts: np.ndarray, amax: float, bins: int = 2048) -> np.ndarray:
    """Re-bin a log-grid |x| histogram onto `bins` linear bins over [0, amax] (CDF interpolation)."""
    edges = bin_edges()
    cum = np.concatenate([[0.0], np.cumsum(counts)])
    lin = np.linspace(0.0, amax, bins + 1)
    c = np.interp(lin, edges, cum)
    c[-1] = cum[-1]  # everything up to amax (the grid's top edge can lie above it)
    return np.diff(c)


def _entropy_threshold(counts: np.ndarray, amax: float, bins: int = 2048, levels: int = 128) -> float:
    """TensorRT's legacy entropy calibration: the threshold whose 128-level quantization of the
    clipped distribution has the least KL divergence from it."""
    pooled = counts.sum(0)
    if amax <= 0 or pooled.sum() == 0:
        return max(amax, 0.0)
    hist = linear_histogram(pooled, amax, bins)
    width = amax / bins
    best_kl, best_i = np.inf, bins
    tail = np.concatenate([np.cumsum(hist[::-1])[::-1], [0.0]])  # tail[i] = sum(hist[i:])
    for i in range(levels, bins + 1):
        p = hist[:i].copy()
        p[i - 1] += tail[i]
        nz = p > 0
        # q: the first i bins merged into `levels` groups, each group's mass spread over its non-empty bins
        group = (np.arange(i) * levels) // i
        mass = np.bincount(group, weights=hist[:i], minlength=levels)
        nonempty = np.bincount(group, weights=(hist[:i] > 0).astype(np.float64), minlength=levels)
        q = np.where(hist[:i] > 0, mass[group] / np.maximum(nonempty[group], 1), 0.0)
        ps, qs = p.sum(), q.sum()
        if ps <= 0 or qs <= 0:
            continue
        pn, qn = p / ps, q / qs
        if np.any(nz & (qn <= 0)):  # the outlier mass in the last bin: smooth as TensorRT does
            qn = np.where(nz & (qn <= 0), 1e-12, qn)
        kl = float((pn[nz] * np.log(pn[nz] / qn[nz])).sum())
        if kl < best_kl:
            best_kl, best_i = kl, i
    return float(min((best_i + 0.5) * width, amax))


def choose_ranges(hists: ActivationHistograms, settings: ActCalibSettings) -> ActivationRanges:
    """One INT8 clipping threshold per activation tensor from its streamed histograms."""
    out, seen = {}, {}
    for i, name in enumerate(hists.names):
        counts, amax_k, sumsq = hists.counts[i], hists.amax[i], hists.sumsq[i]
        amax = float(amax_k.max()) if amax_k.size else 0.0
        seen[name] = amax
        if settings.method == "max" or amax <= 0:
            a = amax
        elif settings.method == "percentile":
            a = _percentile_threshold(counts, amax, settings.percentile or DEFAULT_PERCENTILE)
        elif settings.method == "entropy":
            a = _entropy_threshold(counts, amax)
        else:
            a = _mse_threshold(counts, amax_k, sumsq, settings.over_steps)
        out[name] = max(a, 1e-6) if amax > 0 else 0.0
    return ActivationRanges(amax=out, observed_max=seen, settings=settings)
