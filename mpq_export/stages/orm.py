"""orm stage: OMPQ's network orthogonality metric per timestep, and its aggregation over time.

For layer l at profiled step t, G_l = Y_l Y_l^T (N x N, from calibrate). ORM(i, j) is linear
CKA between layers i and j: the cosine of their centred Grams. gamma_i(t) is the mean ORM of
layer i with every other layer, and theta_i(t) = exp(-beta * gamma_i(t)): the more orthogonal
a layer's features are to the rest of the network, the more it matters. theta_i aggregates
theta_i(t) with weights w_t = exp(-alpha * t / T) (docs/design.md).

Two estimators: "biased" (OMPQ's: H G H) and "unbiased" (the U-statistic HSIC; diagonal-free
U-centring). With N much smaller than the feature dimension, biased CKA of unrelated features
drifts toward 1; the unbiased one does not. `orm_spread` lets a user see when ORM collapsed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from mpq_export.runtime.sampler import timestep_value
from mpq_export.util.errors import MPQError

ESTIMATORS = ("biased", "unbiased")
AGGREGATIONS = ("mean-of-exp", "exp-of-mean")
_DEGENERATE_RTOL = 1e-7  # centred Gram norm relative to the raw one below which a layer carries no per-sample signal


MAX_ALPHA = 100.0  # exp(100) between the first and last step: far past any weighting that still averages


@dataclass(frozen=True)
class OrmSettings:
    estimator: str = "unbiased"  # decided by docs/quality.md: better than or equal to biased at every budget
    alpha: float = 1.0  # timestep weighting w_t = exp(-alpha t / T); 0 = plain mean
    beta: float | None = None  # None: 1 / std(gamma), so beta * std(gamma) = 1
    agg: str = "mean-of-exp"

    def __post_init__(self):
        if self.estimator not in ESTIMATORS:
            raise MPQError(f"--orm-estimator must be one of {', '.join(ESTIMATORS)}, got '{self.estimator}'")
        if self.agg not in AGGREGATIONS:
            raise MPQError(f"--agg must be one of {', '.join(AGGREGATIONS)}, got '{self.agg}'")
        if not (math.isfinite(self.alpha) and abs(self.alpha) <= MAX_ALPHA):
            raise MPQError(f"--alpha must be a finite number in [-{MAX_ALPHA:g}, {MAX_ALPHA:g}] (w_t = exp(-alpha t / T): "
                           f"beyond that one profiled step takes all the weight), got {self.alpha}")
        if self.beta is not None and not (math.isfinite(self.beta) and self.beta > 0):
            raise MPQError(f"--beta must be a finite positive number, got {self.beta}")


def timestep_weights(timesteps: np.ndarray, alpha: float, num_train_timesteps: int) -> np.ndarray:
    """w_t = exp(-alpha t / T), normalised to sum 1: how much each profiled step counts (ORM and sensitivity)."""
    log_w = -alpha * np.asarray(timesteps, dtype=np.float64) / num_train_timesteps
    w = np.exp(log_w - log_w.max())  # the same ratios; no overflow for a large negative alpha
    return w / w.sum()


@dataclass(frozen=True)
class OrmSpread:
    """The off-diagonal ORM values of one profiled step (None where fewer than two layers are valid)."""
    t: int | float  # the scheduler's own units (sampler.timestep_value)
    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    valid_layers: int


@dataclass
class LayerImportance:
    layer_names: list[str]
    theta: np.ndarray  # [L] aggregated importance
    theta_per_t: np.ndarray  # [K, L]
    gamma_per_t: np.ndarray  # [K, L] (NaN for excluded layers)
    timesteps: np.ndarray  # [K]
    weights: np.ndarray  # [K] w_t, normalised to sum 1
    beta: float
    settings: OrmSettings
    excluded: list[str] = field(default_factory=list)  # time-only layers: no per-sample signal, median theta
    orm_spread: list[OrmSpread] = field(default_factory=list)  # per profiled step


def centre(g: np.ndarray) -> np.ndarray:
    """H G H with H = I - 11^T/N."""
    return g - g.mean(0, keepdims=True) - g.mean(1, keepdims=True) + g.mean()


def u_centre(g: np.ndarray) -> np.ndarray:
    """U-centring: <U(K), U(L)> / (n (n - 3)) is the unbiased HSIC estimator (Song et al. 2012)."""
    n = g.shape[0]
    g = g.copy()
    np.fill_diagonal(g, 0.0)
    row = g.sum(1, keepdims=True) / (n - 2)
    col = g.sum(0, keepdims=True) / (n - 2)
    u = g - row - col + g.sum() / ((n - 1) * (n - 2))
    np.fill_diagonal(u, 0.0)
    return u


def orm_matrix(grams: np.ndarray, estimator: str = "biased") -> tuple[np.ndarray, np.ndarray]:
    """ORM between every pair of layers from their raw Grams [L, N, N].

    Returns (ORM [L, L], valid [L]); invalid layers (no per-sample variation) have NaN rows.
    """
    L, n, _ = grams.shape
    if estimator == "unbiased" and n < 4:
        raise MPQError("the unbiased ORM estimator needs at least 4 samples")
    flat = np.zeros((L, n * n))
    valid = np.zeros(L, dtype=bool)
    for i in range(L):
        c = centre(grams[i]) if estimator == "biased" else u_centre(grams[i])
        norm = np.linalg.norm(c)
        scale = max(np.linalg.norm(grams[i]), 1e-300)
        if norm > _DEGENERATE_RTOL * scale and np.isfinite(norm):
            flat[i] = (c / norm).ravel()
            valid[i] = True
    orm = flat @ flat.T
    orm[~valid, :] = np.nan
    orm[:, ~valid] = np.nan
    return orm, valid


def linear_cka(x: np.ndarray, y: np.ndarray, estimator: str = "biased") -> float:
    """ORM of two feature matrices [N, d1], [N, d2] (for tests and users' own checks)."""
    gx, gy = x.reshape(len(x), -1) @ x.reshape(len(x), -1).T, y.reshape(len(y), -1) @ y.reshape(len(y), -1).T
    orm, _ = orm_matrix(np.stack([gx.astype(np.float64), gy.astype(np.float64)]), estimator)
    return float(orm[0, 1])


def _gamma(orm: np.ndarray, valid: np.ndarray) -> np.ndarray:
    m = int(valid.sum())
    g = np.full(len(valid), np.nan)
    if m < 2:
        return g
    sub = orm[np.ix_(valid, valid)]
    g[valid] = (sub.sum(1) - np.diag(sub)) / (m - 1)  # mean over j != i, normalised by (valid) L - 1
    return g


def compute_importance(grams: np.ndarray, timesteps: np.ndarray, layer_names: list[str],
                       settings: OrmSettings, num_train_timesteps: int = 1000) -> LayerImportance:
    """theta per layer from the Grams [K, L, N, N] of the profiled steps."""
    K, L = grams.shape[:2]
    gammas = np.full((K, L), np.nan)
    spread = []
    valid_any = np.zeros(L, dtype=bool)
    for k in range(K):
        orm, valid = orm_matrix(grams[k], settings.estimator)
        valid_any |= valid
        gammas[k] = _gamma(orm, valid)
        off = orm[np.ix_(valid, valid)][~np.eye(int(valid.sum()), dtype=bool)]
        stat = (lambda f: float(f(off)) if off.size else None)  # noqa: E731
        spread.append(OrmSpread(t=timestep_value(timesteps[k]), mean=stat(np.mean), std=stat(np.std), min=stat(np.min),
                                max=stat(np.max), valid_layers=int(valid.sum())))
    if int(np.isfinite(gammas).any(axis=0).sum()) < 2:
        raise MPQError("ORM needs at least two layers with per-sample variation; the calibration produced fewer "
                       "(check that the samples differ: --samples, --calib-data)")
    if settings.beta is not None:
        beta = float(settings.beta)
    else:
        stds = [np.nanstd(g) for g in gammas if np.isfinite(g).sum() >= 2]
        s = float(np.mean(stds)) if stds else 0.0
        beta = 1.0 / s if s > 1e-12 else 1.0
    w = timestep_weights(timesteps, settings.alpha, num_train_timesteps)
    theta_t = np.exp(-beta * gammas)
    for k in range(K):  # layers without per-sample signal at t take the median of the rest
        bad = ~np.isfinite(theta_t[k])
        if bad.any() and (~bad).any():
            theta_t[k, bad] = np.median(theta_t[k, ~bad])
    if settings.agg == "mean-of-exp":
        theta = (w[:, None] * theta_t).sum(0)
    else:
        g_filled = np.where(np.isfinite(gammas), gammas, np.nanmedian(gammas, axis=1, keepdims=True))
        theta = np.exp(-beta * (w[:, None] * g_filled).sum(0))
    excluded = [n for n, v in zip(layer_names, valid_any) if not v]
    if excluded:
        theta[~valid_any] = np.median(theta[valid_any])
    return LayerImportance(layer_names=list(layer_names), theta=theta, theta_per_t=theta_t, gamma_per_t=gammas,
                           timesteps=np.asarray(timesteps), weights=w, beta=beta, settings=settings,
                           excluded=excluded, orm_spread=spread)
