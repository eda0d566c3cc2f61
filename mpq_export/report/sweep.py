"""A budget list's summary: summary.json / summary.md and pareto.png (quality against average bits)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

from mpq_export.report.plots import _plt
from mpq_export.report.records import Report


@dataclass(frozen=True)
class SweepRow:
    """One budget of a --budget list, in summary.json."""
    budget: float
    achieved_bits: float
    folder: str
    mean_sqnr_db: float
    sample_psnr_db: float
    method: str
    scorer: str

    @classmethod
    def of(cls, r: Report) -> "SweepRow":
        return cls(r.budget, r.achieved_bits, os.path.basename(os.path.dirname(r.output_model)),
                   r.validation.mean_sqnr_db, r.validation.sample_psnr_db, r.allocation.method, r.allocation.scorer)


def write_pareto(out_root: str, reports: list[Report]) -> None:
    """For --budget lists: summary.json / summary.md and pareto.png (quality vs average bits)."""
    plt = _plt()
    rows = sorted((SweepRow.of(r) for r in reports), key=lambda x: x.achieved_bits)
    fig, ax = plt.subplots(figsize=(6, 3.8))
    bits = [r.achieved_bits for r in rows]
    ax.plot(bits, [r.mean_sqnr_db for r in rows], "o-", label="mean noise SQNR (dB)")
    ax.plot(bits, [r.sample_psnr_db for r in rows], "s-", label="final-sample PSNR vs FP32 (dB)")
    ax.set_xlabel("average weight bits")
    ax.set_ylabel("dB")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("quality vs size, one calibration")
    fig.tight_layout()
    fig.savefig(os.path.join(out_root, "pareto.png"), dpi=110)
    plt.close(fig)
    with open(os.path.join(out_root, "summary.json"), "w") as f:
        json.dump([asdict(r) for r in rows], f, indent=2)
    md = ["# mpq-export budget sweep", "", "| budget | achieved bits | mean SQNR (dB) | sample PSNR (dB) | folder |",
          "|---:|---:|---:|---:|---|"]
    md += [f"| {r.budget:g} | {r.achieved_bits:.4f} | {r.mean_sqnr_db:.2f} | {r.sample_psnr_db:.2f} | "
           f"[{r.folder}]({r.folder}/report.md) |" for r in rows]
    md += ["", "![pareto](pareto.png)", ""]
    with open(os.path.join(out_root, "summary.md"), "w") as f:
        f.write("\n".join(md))
