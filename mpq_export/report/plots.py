"""The report's plots (PNG): bits per layer, per-step validation, per-step importance, the sample grid.

matplotlib is imported lazily, with the Agg backend (no display on build machines).
"""

from __future__ import annotations

import numpy as np

from mpq_export.report.records import Report, TimestepImportance


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str, left: float = 0.7, right: float = 0.25, bottom: float = 0.5, top: float = 0.35) -> None:
    """Margins fixed in inches rather than fig.tight_layout: the layout pass measures every tick label,
    and the plots would take a quarter of a small model's run."""
    w, h = fig.get_size_inches()
    fig.subplots_adjust(left=left / w, right=1 - right / w, bottom=bottom / h, top=1 - top / h)
    fig.savefig(path, dpi=110)
    _plt().close(fig)


def plot_bits(report: Report, path: str) -> None:
    plt = _plt()
    layers = report.layers
    fig, ax = plt.subplots(figsize=(max(8, len(layers) * 0.12), 4))
    colors = {"w4a8": "#d62728", "w4a16": "#ff7f0e", "w8a8": "#1f77b4", "fp8": "#9467bd", "fp16": "#2ca02c"}
    x = np.arange(len(layers))
    ax.bar(x, [l.weight_bits for l in layers], color=[colors.get(l.format, "gray") for l in layers], width=0.9)
    ax2 = ax.twinx()
    ax2.plot(x, [l.importance for l in layers], "k.", ms=3, label="importance")
    ax2.set_yscale("log")
    ax.set_xlabel("layer (graph order)")
    ax.set_ylabel("weight bits")
    ax2.set_ylabel("importance (log)")
    ax.set_title(f"{report.allocation.method} allocation at {report.achieved_bits:.3f} bits (budget {report.budget:g})")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors.values()]
    ax.legend(handles, list(colors), loc="upper left", fontsize=7)
    _save(fig, path, right=1.0)


def plot_validation(report: Report, path: str) -> None:
    plt = _plt()
    v = report.validation.per_timestep
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r.t for r in v], [r.sqnr_db for r in v], "o-")
    ax.set_xlabel("timestep t")
    ax.set_ylabel("noise-prediction SQNR (dB)")
    ax.set_title("quantized vs FP32, per profiled timestep")
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_importance(importance_per_t: TimestepImportance, path: str) -> None:
    plt = _plt()
    ts = importance_per_t.timesteps
    theta = np.asarray(importance_per_t.theta)  # [K, L]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    im = ax.imshow(np.log10(np.maximum(theta, 1e-300)), aspect="auto", cmap="viridis")
    ax.set_yticks(range(len(ts)))
    ax.set_yticklabels([str(t) for t in ts], fontsize=6)
    ax.set_ylabel("timestep t")
    ax.set_xlabel("layer (graph order)")
    ax.set_title("log10 theta_i(t): per-timestep ORM importance")
    fig.colorbar(im, ax=ax)
    _save(fig, path, right=0.1)


def sample_grid(fp32: np.ndarray, quant: np.ndarray, path: str, title: str = "") -> None:
    """Row 1 FP32, row 2 quantized, same seeds column by column: one mosaic image, 1-pixel white gaps."""
    plt = _plt()
    n = min(len(fp32), 16)

    def img(a):  # [C, H, W] in [-1, 1] -> [H, W, 3] in [0, 1]
        a = np.clip((np.asarray(a[:3], np.float32) + 1) / 2, 0, 1)
        return np.repeat(a, 3, axis=0).transpose(1, 2, 0) if a.shape[0] == 1 else a.transpose(1, 2, 0)

    h, w = img(fp32[0]).shape[:2]
    mosaic = np.ones((2 * h + 1, n * (w + 1) - 1, 3), np.float32)
    for r, src in enumerate((fp32, quant)):
        for j in range(n):
            mosaic[r * (h + 1): r * (h + 1) + h, j * (w + 1): j * (w + 1) + w] = img(src[j])
    fig, ax = plt.subplots(figsize=(max(n, 6) * 1.0, 2.3))
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_yticks([h / 2, h + 1 + h / 2], ["FP32", "quantized"], fontsize=7)
    ax.tick_params(length=0)
    ax.set_xticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        ax.set_title(title, fontsize=8)
    _save(fig, path, left=0.85, right=0.1, bottom=0.1, top=0.3 if title else 0.1)
