"""w4a16-lr<e>: INT4 block weights plus a low-rank FP16 branch, W = A B + R (GEMMs).

The SVDQuant / LQER idea in a form TensorRT and onnxruntime build as they are: the branch keeps the
output-relevant directions of the weight in 16 bits and the residual R, whose range is then smaller, goes
to INT4 blocks (GPTQ, as w4a16). In the graph: y = x DQ(R) + (x A) B, two plain MatMuls and an Add beside
the weight-only INT4 GEMM, all in the float type of the graph (FP16 on tensorrt).

The branch: with H the layer's input second moments (GPTQ's statistics), the rank-r L minimising the
output error ||(W - L) H^(1/2)|| is [W H^(1/2)]_r H^(-1/2) (an SVD of the weighted weight, the weighting
undone on A); without H a plain truncated SVD. The factors split the singular values evenly (A = V S^(1/2),
B = S^(1/2) U^T), which keeps both in FP16's range.

Stored bits per weight: 4 + 16 r (K + N) / (K N) (the budget counts the factors at 16 bits; scales, as
for every format, are not counted). Each format of the ladder is named by the extra bits it aims at
(`extra_bits`): the rank is chosen per layer so that the branch costs about that much on its shape, so
one name costs the same fraction of a bit on a 64-wide toy GEMM and on a 3072-wide Flux one (where it
is a much larger rank).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mpq_export.formats.base import GEMM_OPS, Format, LayerStorage, as_calibration
from mpq_export.formats.integer import W4A16
from mpq_export.formats.weights import QuantizedWeight, weight_sqnr_db

DAMP = 0.01  # H's diagonal damping for the weighted SVD (a fraction of its mean diagonal, as GPTQ's)


@dataclass
class LowRankWeight:
    """The INT4 residual and the FP16-bound factors of one layer (factors in the [K, r] x [r, N] layout of
    y = x A B)."""
    residual: QuantizedWeight
    a: np.ndarray  # [K, r]
    b: np.ndarray  # [r, N]
    layer_shape: tuple  # the weight's own shape
    reduction_axis: int

    def branch(self) -> np.ndarray:
        """A B in the weight's own layout."""
        ab = self.a.astype(np.float64) @ self.b.astype(np.float64)  # [K, N]
        return (ab if self.reduction_axis == 0 else ab.T).astype(np.float32)

    def dequantize(self) -> np.ndarray:
        return self.residual.dequantize() + self.branch()


def gemm_dims(layer) -> tuple[int, int]:
    """(K, N) of a MatMul/Gemm weight."""
    k = layer.weight_shape[layer.reduction_axis]
    return k, layer.params // k


def weighted_svd(wm: np.ndarray, hessian: np.ndarray | None, rank: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(U [N, r], S [r], V [K, r]) with U S V^T the output-error-optimal rank-r approximation of W in the
    [N, K] layout `wm` (formats/gptq.weight_matrix), weighted by H when given: the SVD of W H^(1/2), the
    weighting undone on V. Layers much wider than the rank take the randomized path (_large_weighted_svd)."""
    if min(wm.shape) >= EXACT_SVD_MAX_DIM and min(wm.shape) >= 4 * _sketch_width(rank):
        return _large_weighted_svd(wm, hessian, rank)
    return _exact_weighted_svd(wm, hessian, rank)


def _exact_weighted_svd(wm: np.ndarray, hessian: np.ndarray | None, rank: int):
    w = wm.astype(np.float64)
    if hessian is not None:
        h = _damped(hessian)
        lam, q = np.linalg.eigh(h)
        lam = np.maximum(lam, 1e-12 * lam.max())
        h_half, h_inv_half = (q * np.sqrt(lam)) @ q.T, (q / np.sqrt(lam)) @ q.T
        u, s, vt = np.linalg.svd(w @ h_half, full_matrices=False)
        return u[:, :rank], s[:rank], h_inv_half @ vt[:rank].T
    u, s, vt = np.linalg.svd(w, full_matrices=False)
    return u[:, :rank], s[:rank], vt[:rank].T


# the exact SVD up to this width (every bundled model); past it, and when the rank is a small part of the
# width, a randomized one: at SD3-medium's 1536 x 6144 the exact eigh and SVD take seconds per layer, the
# randomized ones a fraction, for a rank-r error within a fraction of a percent of the optimum
# (Halko, Martinsson and Tropp 2011, algorithm 4.4: tests/test_lowrank.py measures it)
EXACT_SVD_MAX_DIM = 512
POWER_ITERATIONS = 3


def _sketch_width(rank: int) -> int:
    return 2 * rank + 16


def _damped(hessian: np.ndarray) -> np.ndarray:
    h = hessian.astype(np.float64)
    mean = float(np.mean(np.diag(h)))
    return h + DAMP * mean * np.eye(len(h)) if mean > 0 else np.eye(len(h))


def _large_weighted_svd(wm: np.ndarray, hessian: np.ndarray | None, rank: int):
    """weighted_svd by a randomized subspace iteration on G = W H W^T (N x N), never formed: each pass costs
    two products with W and one with H on a sketch of 2r + 16 columns, where a square root of H would cost
    K^3 (a Cholesky at SD3's 6144-wide inputs takes seconds per layer). G's top eigenvectors U_r are W H^(1/2)'s
    top left singular vectors, and the output-optimal rank-r part of W is U_r U_r^T W, so V = W^T U_r / s.
    Float32 products, re-orthonormalised each pass; seeded: the same weight gives the same factors."""
    w = wm.astype(np.float32)
    h = None
    if hessian is not None:  # _damped's H in float32, without a K x K float64 copy and identity
        h = np.array(hessian, dtype=np.float32)
        mean = float(np.mean(np.diag(h).astype(np.float64)))
        if mean > 0:
            h[np.diag_indices_from(h)] += np.float32(DAMP * mean)
        else:
            h = None

    def g(q: np.ndarray) -> np.ndarray:  # G q = W H W^T q
        t = w.T @ q
        return w @ (h @ t if h is not None else t)

    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(g(rng.standard_normal((w.shape[0], _sketch_width(rank))).astype(np.float32)))
    for _ in range(POWER_ITERATIONS - 1):  # G's spectrum is the squared one: as many passes on W H^(1/2)
        q, _ = np.linalg.qr(g(q))
    wq = w.T @ q  # [K, p]
    hwq = h @ wq if h is not None else wq
    wq = wq.astype(np.float64)
    lam, e = np.linalg.eigh(wq.T @ hwq.astype(np.float64))  # Q^T G Q, ascending
    lam, e = lam[::-1][:rank], e[:, ::-1][:, :rank]
    s = np.sqrt(np.maximum(lam, 0.0))
    u = q.astype(np.float64) @ e
    v = (wq @ e) / np.maximum(s, 1e-30)[None, :]  # W^T U_r / s
    return u, s, v


def low_rank_factors(wm: np.ndarray, rank: int, hessian: np.ndarray | None,
                     svd: tuple | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(A [K, r], B [r, N]) with x A B the output-error-optimal rank-r part of x W for W in the [N, K]
    layout `wm`, weighted by H when given; `svd`: weighted_svd's result for at least this rank."""
    u, s, v = svd if svd is not None else weighted_svd(wm, hessian, rank)
    root = np.sqrt(s[:rank])
    return (v[:, :rank] * root).astype(np.float32), (root[:, None] * u[:, :rank].T).astype(np.float32)


def max_rank(layer) -> int:
    """The largest branch offered: a quarter of the smaller dimension (past it the factors cost more than
    the INT4 weight they correct, 4 bits at a quarter on a square layer)."""
    k, n = gemm_dims(layer)
    return min(k, n) // 4


class LowRankFormat(Format):
    """INT4 blocks along K (as w4a16) plus a rank-r FP16 branch costing about `extra_bits` per weight."""
    weight_bits, input = 4, None

    def __init__(self, extra_bits: float):
        self.extra_bits = float(extra_bits)
        self.name = f"w4a16-lr{self.extra_bits:g}"
        self.summary = (f"INT4 weight-only blocks plus an FP16 low-rank branch of about {self.extra_bits:g} bit per "
                        f"weight (MatMul/Gemm)")

    def applies_to(self, layer) -> bool:
        return layer.op_type in GEMM_OPS and max_rank(layer) >= 1

    def realisation(self, layer) -> tuple:
        return ("w4a16-lr", self.rank(layer))

    def same_family(self, other: Format) -> bool:
        return isinstance(other, LowRankFormat)

    def exact_rank(self, layer) -> int:
        """The rank whose factors cost about extra_bits per weight on this layer's shape (0 if under half a
        rank), at most max_rank."""
        k, n = gemm_dims(layer)
        return min(int(round(self.extra_bits * k * n / (16 * (k + n)))), max_rank(layer))

    def rank(self, layer) -> int:
        """exact_rank, at least 1: the ladder's smallest formats are a branch of rank 1 on a narrow layer."""
        return max(1, self.exact_rank(layer))

    def layer_bits(self, layer) -> int:
        k, n = gemm_dims(layer)
        return layer.params * 4 + 16 * self.rank(layer) * (k + n)

    _svd_memo = [None]  # shared by the ladder: one SVD per layer serves every rank of it

    def _svd(self, layer, w, hessian, wm):
        """weighted_svd up to the layer's largest rank, once for the weight and H at hand (held, so their
        identities cannot be reused by other arrays)."""
        memo = LowRankFormat._svd_memo[0]
        if (memo is not None and memo[0] == layer.name and memo[1] is w and memo[2] is hessian
                and len(memo[3][1]) >= self.rank(layer)):
            return memo[3]
        svd = weighted_svd(wm, hessian, max(self.rank(layer), *(f.rank(layer) for f in LOW_RANK_LADDER)))
        LowRankFormat._svd_memo[0] = (layer.name, w, hessian, svd)
        return svd

    def quantize_weight(self, layer, w: np.ndarray, settings, cal) -> LowRankWeight:
        from mpq_export.formats.gptq import from_matrix, weight_matrix

        hessian = as_calibration(cal).hessian
        wm = weight_matrix(np.asarray(w, np.float32), layer)
        a, b = low_rank_factors(wm, self.rank(layer), hessian, self._svd(layer, w, hessian, wm))
        # the factors as the graph will hold them: the tensorrt target's graph is FP16
        a, b = a.astype(np.float16).astype(np.float32), b.astype(np.float16).astype(np.float32)
        branch = (b.T.astype(np.float64) @ a.T.astype(np.float64)).astype(np.float32)  # [N, K], wm's layout
        residual = from_matrix(wm - branch, w.shape, layer)
        return LowRankWeight(W4A16.quantize_weight(layer, residual, settings, hessian), a, b, tuple(w.shape),
                             layer.reduction_axis)

    def effective_rows(self, layer, w: np.ndarray, settings, cal, rows: np.ndarray) -> np.ndarray:
        """The branch from the whole weight (its SVD), the INT4 residual on the channels `rows` alone."""
        from mpq_export.formats.base import row_subset
        from mpq_export.formats.gptq import from_matrix, weight_matrix

        hessian = as_calibration(cal).hessian
        wm = weight_matrix(np.asarray(w, np.float32), layer)
        a, b = low_rank_factors(wm, self.rank(layer), hessian, self._svd(layer, w, hessian, wm))
        a, b = a.astype(np.float16).astype(np.float32), b.astype(np.float16).astype(np.float32)
        branch = (b.T[rows].astype(np.float64) @ a.T.astype(np.float64)).astype(np.float32)  # [rows, K]
        sub_layer, _ = row_subset(layer, w, rows)
        residual = W4A16.quantize_weight(sub_layer, from_matrix(wm[rows] - branch, sub_layer.weight_shape, layer),
                                         settings, hessian)
        return weight_matrix(residual.dequantize(), sub_layer) + branch

    def write(self, writer, layer, node, w, quantized: LowRankWeight) -> LayerStorage:
        values, storage = W4A16.stored_constant(quantized.residual.values)
        node.inputs[1] = writer.weight_dq(layer, w.shape, values, storage, quantized.residual)
        writer.add_low_rank_branch(layer, node, quantized.a, quantized.b)
        return LayerStorage(self.name, storage, 4, weight_sqnr_db(w, quantized.dequantize()),
                            f"rank {quantized.a.shape[1]}")

    @classmethod
    def bits_in_graph(cls, view, node, layer) -> int | None:
        """An INT4 weight behind a DequantizeLinear whose layer output is added to (x A) B, with A and B
        constants and x the layer's own input: the INT4 weights plus the factors at 16 bits each."""
        stored = view.stored_weight(node)
        factors = view.low_rank_factors(node)
        if stored is None or factors is None:
            return None
        a, b = factors
        return layer.params * 4 + 16 * (int(np.prod(a.dims)) + int(np.prod(b.dims)))


LOW_RANK_LADDER = tuple(LowRankFormat(e) for e in (0.125, 0.25, 0.5, 1.0))
