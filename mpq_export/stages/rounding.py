"""Weight rounding better than round-to-nearest: GPTQ (Frantar et al., 2023) on calibration statistics.

Round-to-nearest minimises each weight's own error; what matters is the layer's output error
||X W^T - X Q^T||^2 over the inputs X the layer really sees. GPTQ quantizes one input column at a
time and spreads each column's rounding error over the columns not yet quantized, weighted by the
inverse of H = X^T X. Scales start from the same MSE clip search as round-to-nearest (per channel, or
per INT4 block). For INT4 per-channel weights (convolutions), GPTQ takes the columns of most input
energy first (act order) and each row's scale is multiplied by the candidate whose GPTQ result has
the least output error (gptq_scale_search), measured in docs/quality.md ("Reading: which choices
became defaults, and why") and described in docs/design.md ("Weight rounding"). The file format does not change:
only which integers and scales are stored.

Input statistics: calibration accumulates, per layer and profiled timestep, H_t = X_t^T X_t of the
layer's input (im2col patches for a Conv, rows for MatMul/Gemm; at most `MAX_ROWS` rows per step,
drawn with a fixed seed) and stores sum_t H_t / trace(H_t): every profiled timestep weighs the same,
as in the activation ranges. H is K x K float32 (K = Cin * kh * kw): layers with K above `MAX_K`
keep round-to-nearest, which bounds memory (a 4608 x 4608 H is 85 MB).
"""

from __future__ import annotations

import numpy as np

MAX_ROWS = 4096  # input rows per layer and step that enter H
MAX_K = 4608  # largest reduction size that gets an H (and GPTQ)
HESSIAN_MEM_MB = 2048  # all layers' H together; layers beyond it keep round-to-nearest


def layer_rows(x: np.ndarray, layer, rng: np.random.Generator, max_rows: int = MAX_ROWS) -> np.ndarray | None:
    """The layer's input as rows of its reduction dimension [rows, K] (float32), subsampled to
    `max_rows` (calibration gives each chunk of samples its share of MAX_ROWS per step); None when the
    layer's geometry is not supported (then it keeps round-to-nearest). A Conv's columns are in patch
    order [kh, kw, C]; `weight_order(layer)` maps them to the weight matrix's [C, kh, kw] (applied once to
    the K x K sum, not to every call's rows, where it was a visible part of calibration's time)."""
    if layer.op_type == "Conv":
        if not layer.conv_geometry or x.ndim != 4:
            return None
        (sh, sw), pads, (dh, dw), group = layer.conv_geometry
        if group != 1 or (dh, dw) != (1, 1) or len(pads) != 4:
            return None
        kh, kw = layer.weight_shape[2], layer.weight_shape[3]
        if layer.weight_shape[1] * kh * kw > MAX_K:
            return None
        n, c, hgt, wid = x.shape
        ho = (hgt + pads[0] + pads[2] - kh) // sh + 1
        wo = (wid + pads[1] + pads[3] - kw) // sw + 1
        total = n * ho * wo
        idx = rng.choice(total, size=min(max_rows, total), replace=False)
        ni, rest = np.divmod(idx, ho * wo)
        hi, wi = np.divmod(rest, wo)
        # one np.take of whole C-runs from a padded channels-last copy (each patch pixel is a contiguous
        # run of C values): faster than indexing the 4-D copy once per kernel offset or a sliding-window view
        hp, wp = hgt + pads[0] + pads[2], wid + pads[1] + pads[3]
        xp = np.zeros((n, hp, wp, c), dtype=np.float32)
        xp[:, pads[0]:pads[0] + hgt, pads[1]:pads[1] + wid] = x.transpose(0, 2, 3, 1)
        corner = (ni * hp + hi * sh) * wp + wi * sw  # each patch's top-left pixel in the flattened copy
        offsets = (np.arange(kh)[:, None] * wp + np.arange(kw)[None, :]).ravel()
        rows = np.take(xp.reshape(-1, c), (corner[:, None] + offsets[None, :]).ravel(), axis=0)
        return rows.reshape(len(idx), kh * kw * c)
    if layer.op_type in ("MatMul", "Gemm"):
        k = layer.weight_shape[layer.reduction_axis]
        if k > MAX_K or x.shape[-1] != k:
            return None
        rows = x.reshape(-1, k)
        if len(rows) > max_rows:
            rows = rows[rng.choice(len(rows), size=max_rows, replace=False)]
        return rows.astype(np.float32)
    return None


def weight_order(layer) -> np.ndarray | None:
    """The column permutation p with rows[:, p] (and H[p][:, p]) in the weight matrix's order, for the rows
    `layer_rows` gives; None where they are in it already (MatMul/Gemm)."""
    if layer.op_type != "Conv":
        return None
    c, kh, kw = layer.weight_shape[1], layer.weight_shape[2], layer.weight_shape[3]
    return np.arange(kh * kw * c).reshape(kh, kw, c).transpose(2, 0, 1).ravel()


class HessianSum:
    """sum over calls of X^T X / tr(X^T X) for one layer's input rows X [rows, K], in float32.

    Calibration fetches a chunk of rows per onnxruntime call (one UNet row per call at Stable-Diffusion
    size), so each call adds only MAX_ROWS / N rows. The sum is therefore accumulated in place by BLAS
    syrk (C += alpha X^T X, upper triangle, no K x K temporary per call) and mirrored once at the end:
    forming, scaling and adding a full K x K matrix per call cost several times the product itself at
    the few rows each call adds (tools/bench_calibration.py shows where calibration's time goes)."""

    def __init__(self, k: int):
        self._upper = np.zeros((k, k), dtype=np.float32, order="F")
        self.calls = 0  # calls that added rows of nonzero energy

    def add(self, x: np.ndarray) -> None:
        from scipy.linalg.blas import ssyrk

        x = np.ascontiguousarray(x, dtype=np.float32)  # so that x.T is Fortran-ordered: no copy in syrk
        tr = float(np.vdot(x, x))  # tr(X^T X): the sum of squares
        if tr <= 0:
            return
        # x.T is Fortran-ordered [K, rows]: syrk with trans=0 forms x.T @ x without copying x. Always
        # scipy's BLAS, even where numpy's product alone is a little faster (4096 rows): alternating the
        # two libraries' thread pools made the statistics markedly slower
        self._upper = ssyrk(1.0 / tr, x.T, beta=1.0, c=self._upper, trans=0, overwrite_c=1)
        self.calls += 1

    def result(self) -> np.ndarray:
        """The symmetric K x K sum (C-ordered float32)."""
        h = np.triu(self._upper)
        h += np.triu(self._upper, 1).T
        return np.ascontiguousarray(h, dtype=np.float32)
