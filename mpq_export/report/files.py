"""One output folder's report files: report.json, report.md and the plots, from one typed Report."""

from __future__ import annotations

import json
import os

from mpq_export.report.markdown import render_markdown
from mpq_export.report.plots import plot_bits, plot_importance, plot_validation
from mpq_export.report.records import Report


def write_report(rep: Report, out_dir: str) -> None:
    """report.json, report.md and the plots of one output folder."""
    plots = []
    plot_bits(rep, os.path.join(out_dir, "bits.png"))
    plots.append("bits.png")
    if rep.validation.per_timestep:
        plot_validation(rep, os.path.join(out_dir, "validation.png"))
        plots.append("validation.png")
    if rep.importance is not None and len(rep.importance_per_timestep.timesteps) > 1:
        plot_importance(rep.importance_per_timestep, os.path.join(out_dir, "importance.png"))
        plots.append("importance.png")
    if os.path.exists(os.path.join(out_dir, "samples.png")):
        plots.append("samples.png")
    rep.plots = plots
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(rep.to_json(), f, indent=2)
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write(render_markdown(rep))
