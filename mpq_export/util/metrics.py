"""Error metrics between a reference array and a test array (float64 accumulation)."""

from __future__ import annotations

import numpy as np


def sqnr_db(ref: np.ndarray, test: np.ndarray) -> float:
    err = float(((ref.astype(np.float64) - test) ** 2).sum())
    return float(10 * np.log10(float((ref.astype(np.float64) ** 2).sum()) / max(err, 1e-30)))


def cosine(ref: np.ndarray, test: np.ndarray) -> float:
    a, b = ref.astype(np.float64).ravel(), test.astype(np.float64).ravel()
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))


def psnr_db(ref: np.ndarray, test: np.ndarray, peak: float) -> float:
    mse = float(((ref.astype(np.float64) - test) ** 2).mean())
    return float(10 * np.log10(peak ** 2 / max(mse, 1e-30)))
