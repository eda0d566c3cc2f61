"""Weight quantization numerics shared by the formats: symmetric integer grids (per channel or in blocks
along K) and FP8 E4M3, with a mean-squared-error clip search for the scales.

The stored integers or FP8 values and their scales make a `QuantizedWeight`; how a format lays them out
in the graph is the format's (formats/base.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FP8_MAX = 448.0  # the largest finite FP8 E4M3 value: the scale maps |max| onto it (TensorRT, "Quantization Schemes")


@dataclass
class QuantizedWeight:
    values: np.ndarray  # integer values, the weight's shape
    scale: np.ndarray  # per-channel: [C]; blocked: weight rank with the blocked axis shrunk
    axis: int
    block_size: int | None  # None for per-channel

    def scale_like(self) -> np.ndarray:
        """The scale of every weight element (the weight's shape)."""
        if self.block_size is None:
            shape = [1] * self.values.ndim
            shape[self.axis] = -1
            return np.broadcast_to(self.scale.reshape(shape), self.values.shape)
        s = np.repeat(self.scale, self.block_size, axis=self.axis)
        return np.take(s, np.arange(self.values.shape[self.axis]), axis=self.axis)

    def dequantize(self) -> np.ndarray:
        return self.values.astype(np.float32) * self.scale_like()


def _groups_view(w: np.ndarray, axis: int, block_axis: int | None, block: int | None):
    """Rearrange w into [groups, elements] rows that share one scale, and a function back."""
    if block is None:
        moved = np.moveaxis(w, axis, 0)
        return moved.reshape(moved.shape[0], -1), None
    # blocked: w is 2-D; channel axis `axis`, blocks of `block` along `block_axis`
    wt = w if block_axis == 0 else w.T  # [K, N]
    K, N = wt.shape
    nb = -(-K // block)
    pad = np.zeros((nb * block, N), dtype=w.dtype)
    pad[:K] = wt
    g = pad.reshape(nb, block, N).transpose(0, 2, 1).reshape(nb * N, block)  # rows: (block, channel)
    return g, (nb, N, K)


def _row_scales(g: np.ndarray, top: float, on_grid, clip_search: bool, grid: int) -> np.ndarray:
    """The scale of each row of g: |max| / top, or with `clip_search` the clip ratio in [0.5, 1] of least
    squared error once rounded by `on_grid` (the stored grid in units of the scale: integers or E4M3)."""
    amax = np.abs(g).max(axis=1)
    amax = np.where(amax > 0, amax, 1e-8).astype(np.float32)
    best_scale = amax / top
    if clip_search:
        best_err = np.full(len(g), np.inf, dtype=np.float64)
        buf = None
        for r in np.linspace(0.5, 1.0, grid):
            s = (amax * r / top)[:, None]
            # ((on_grid(g / s) * s - g) ** 2).sum(1) in one buffer (the same operations in the same types, so
            # the same scales): at real widths this search is most of the expected-error stage's time
            if buf is None:
                buf = np.empty_like(g, dtype=np.result_type(g.dtype, s.dtype))  # g's layout, as g / s had
            np.divide(g, s, out=buf)
            np.multiply(on_grid(buf), s, out=buf)
            np.subtract(buf, g, out=buf)
            err = np.square(buf, out=buf).sum(1)
            better = err < best_err
            best_err = np.where(better, err, best_err)
            best_scale = np.where(better, s[:, 0], best_scale)
    return best_scale.astype(np.float32)


def quantize_weight(w: np.ndarray, bits: int, axis: int, block_axis: int | None = None,
                    block_size: int | None = None, clip_search: bool = True, grid: int = 20) -> QuantizedWeight:
    """Symmetric quantization to [-(2^(b-1)-1), 2^(b-1)-1] with an MSE-optimal clip per channel/block."""
    qmax = 2 ** (bits - 1) - 1
    w = np.asarray(w, dtype=np.float32)
    g, blocked = _groups_view(w, axis, block_axis, block_size)
    best_scale = _row_scales(g, qmax, lambda v: np.clip(np.round(v, out=v), -qmax, qmax, out=v), clip_search, grid)
    if blocked is None:
        shape = [1] * w.ndim
        shape[axis] = -1
        q = np.clip(np.round(w / best_scale.reshape(shape)), -qmax, qmax).astype(np.int8)
        return QuantizedWeight(q, best_scale, axis, None)
    nb, N, K = blocked
    scale_kn = best_scale.reshape(nb, N)  # [K/B, N]
    s_full = np.repeat(scale_kn, block_size, axis=0)[:K]
    wt = w if block_axis == 0 else w.T
    q = np.clip(np.round(wt / s_full), -qmax, qmax).astype(np.int8)
    if block_axis == 0:
        return QuantizedWeight(q, scale_kn, 0, block_size)
    return QuantizedWeight(q.T.copy(), scale_kn.T.copy(), 1, block_size)


def quantize_weight_fp8(w: np.ndarray, axis: int, clip_search: bool = True, grid: int = 20) -> QuantizedWeight:
    """FP8 E4M3 per-channel weights: scale |max| / 448 per output channel (times the clip ratio of least
    squared error when searching), values rounded to the nearest E4M3 value (QuantizedWeight.values holds
    them as float32, exactly representable)."""
    w = np.asarray(w, dtype=np.float32)
    g, _ = _groups_view(w, axis, None, None)
    # E4M3's error is relative, so clipping rarely pays; the search keeps it only where it does
    best_scale = _row_scales(g, FP8_MAX, to_fp8, clip_search, grid)
    shape = [1] * w.ndim
    shape[axis] = -1
    return QuantizedWeight(to_fp8(w / best_scale.reshape(shape)), best_scale, axis, None)




def to_fp8(x: np.ndarray) -> np.ndarray:
    """x rounded to the nearest FP8 E4M3 value, ties to even, saturated at +-448 as TensorRT's and ONNX's
    QuantizeLinear do (ml_dtypes' cast itself would give NaN past 448), as float32."""
    import ml_dtypes

    return np.clip(np.asarray(x, np.float32), -FP8_MAX, FP8_MAX).astype(ml_dtypes.float8_e4m3fn).astype(np.float32)


def int4_constant(values: np.ndarray, name_hint: str = "int4"):
    """INT4 as a packed TensorProto behind LazyValues: gs.Constant cannot export INT4 itself, and
    onnx.helper.make_tensor would store Python ints in int32_data (8x the file size)."""
    import ml_dtypes
    from onnx import numpy_helper
    from onnx_graphsurgeon.ir.tensor import LazyValues

    return LazyValues(numpy_helper.from_array(values.astype(ml_dtypes.int4), name_hint))


def fp8_constant(values: np.ndarray, name_hint: str = "fp8"):
    """FP8 E4M3 values (already on its grid) as a TensorProto behind LazyValues, one byte each."""
    import ml_dtypes
    from onnx import numpy_helper
    from onnx_graphsurgeon.ir.tensor import LazyValues

    return LazyValues(numpy_helper.from_array(np.asarray(values, np.float32).astype(ml_dtypes.float8_e4m3fn), name_hint))


def weight_sqnr_db(w: np.ndarray, w_hat: np.ndarray) -> float:
    from mpq_export.util.metrics import sqnr_db

    return sqnr_db(w, w_hat)
