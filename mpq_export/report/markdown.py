"""report.md: the typed Report rendered for people (report.json is the same Report for programs)."""

from __future__ import annotations

import os
from collections import Counter

from mpq_export.core.choices import Scorer
from mpq_export.report.records import Report


def _fmt(v, nd=2):
    return "—" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))


def render_markdown(r: Report) -> str:
    """report.md from the Report, section by section."""
    lines = _md_summary(r)
    if r.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in r.notes]
    lines += _md_validation(r) + _md_checks_and_engine(r) + _md_handoff(r) + _md_equal_bits(r) + _md_activation_costs(r)
    lines += _md_stability_and_timings(r) + _md_layers(r)
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in r.plots]
    return "\n".join(lines) + "\n"


def _md_summary(r: Report) -> list[str]:
    imp, cal = r.importance, r.calibration
    given = r.input or r.model
    lines = [
        f"# mpq-export report: {_display_name(given)}", "",
        *([f"- input: `{given}`"] if given != r.model else []),
        f"- model: `{r.model}` ({r.total_params:,} quantizable weight parameters in {len(r.layers)} layers)",
        f"- target: **{r.target}**; output: `{r.output_model}`",
        *([f"- formats of GPU family: {r.gpu}"] if r.gpu else []),
        f"- budget: **{r.budget:g}** average weight bits; achieved (allocation): **{r.achieved_bits:.4f}**; "
        f"counted from the file (= stored by the {r.target} target): {r.counted_bits:.4f}",
        f"- allocation: {r.allocation.method} (scorer: {r.allocation.scorer}), "
        f"solver: {r.allocation.solver_status or 'n/a'}",
        "- formats: " + ", ".join(f"{k}: {c}" for k, c in sorted(r.format_counts.items())),
        f"- calibration: {cal.steps}-step {cal.sampler} ({cal.schedule}), K={cal.profiled_timesteps} profiled steps, "
        f"N={cal.samples} samples, conditioning: {cal.conditioning}" + (" (cached)" if cal.cached else ""),
        f"- activation ranges: {cal.activation_ranges.method} (thresholds at "
        f"{cal.activation_ranges.threshold_over_max_mean:.2f} of the observed max on average)",
    ]
    if imp:
        lines.append(f"- ORM: estimator {imp.estimator}, aggregation {imp.agg}, alpha {imp.alpha:g}, "
                     f"beta {imp.beta:.4g}; off-diagonal ORM spread (mean over t): mean "
                     f"{_fmt(imp.spread_mean, 3)}, std {_fmt(imp.spread_std, 3)}"
                     + (" — **ORM has collapsed toward 1: try --orm-estimator unbiased**" if imp.collapsed else ""))
        if imp.excluded:
            lines.append(f"- {len(imp.excluded)} time-only layer(s) have no per-sample signal (ORM undefined) and "
                         f"take the median importance: " + ", ".join(f"`{n}`" for n in imp.excluded[:8])
                         + (" ..." if len(imp.excluded) > 8 else ""))
    return lines


def _md_validation(r: Report) -> list[str]:
    v = r.validation
    lines = ["", "## Validation (onnxruntime, held-back seeds)", "",
             f"Mean per-timestep noise-prediction SQNR **{v.mean_sqnr_db:.2f} dB**, cosine {v.mean_cosine:.5f}; "
             f"final-sample PSNR vs FP32 from the same seeds **{v.sample_psnr_db:.2f} dB** "
             f"(min {min(v.sample_psnr_per_sample):.2f}, max {max(v.sample_psnr_per_sample):.2f}).", "",
             "| t | SQNR (dB) | cosine | max abs err |", "|---:|---:|---:|---:|"]
    lines += [f"| {p.t} | {p.sqnr_db:.2f} | {p.cosine:.5f} | {p.max_abs_err:.4g} |" for p in v.per_timestep]
    if r.validation_compare:
        lines += ["", "### Same allocation, per target (onnxruntime CPU)", "",
                  "| graph | mean SQNR (dB) | mean cosine | sample PSNR (dB) |", "|---|---:|---:|---:|"]
        lines += [f"| {c.graph} | {c.mean_sqnr_db:.2f} | {c.mean_cosine:.5f} | {c.sample_psnr_db:.2f} |"
                  for c in r.validation_compare]
    return lines


def _md_checks_and_engine(r: Report) -> list[str]:
    lines = []
    if r.check:
        lines += ["", f"TensorRT rule check: {r.check}"]
    if r.polygraphy:
        pg = r.polygraphy
        lines += ["", "## Polygraphy", "", f"Replay the comparison on the held-back validation steps with t >= {pg.min_t or 0} "
                  f"(per step: SNR >= {pg.snr_threshold_db:g} dB, cosine >= {pg.cosine_threshold:g}; the steps nearest "
                  "t = 0, where the noise prediction is fragile but barely reaches the sample, are covered by the table above):", ""]
        for name, cmd in pg.commands.items():
            lines += [f"{name}:", "", "```", cmd, "```", ""]
    if r.engine:
        e = r.engine
        lines += ["", "## TensorRT engine", "", f"- status: {e.status}"]
        if e.path:
            lines.append(f"- engine: `{e.path}` ({e.seconds or 0:.1f} s to build)")
        if e.layer_precisions:
            lines.append("- per-layer precision (engine inspector): " + ", ".join(f"{k}: {c}" for k, c in e.layer_precisions.items()))
    return lines


def _md_handoff(r: Report) -> list[str]:
    lines = []
    for h in r.handoff:
        lines += ["", f"## Hand-off: {h.kind}", "", f"- model: `{h.model}`", f"- checked here: {h.checked}",
                  "", "Run by the runtime itself (not run by mpq-export):", "", "```bash", h.command, "```"]
    return lines


def _md_equal_bits(r: Report) -> list[str]:
    """Which format won where two of equal bits (w8a8 and fp8) were offered, and by how much."""
    choices = r.allocation.equal_bit_choices
    if not choices:
        return []
    chosen = {l.name: l.format for l in r.layers}
    measured = r.allocation.scorer != "orm" and r.allocation.scorer != "none"
    how = (f"the measured error ({_measured_column(r.allocation.scorer)}) inside the 0/1 program" if measured else
           "the expected error of each format (relative output error of the quantized weight under the layer's "
           "input statistics + relative error of the quantized input, from the calibration histograms): the "
           "smaller is offered to the 0/1 program")
    names = sorted({f for e in choices.values() for f in e})
    won = Counter(chosen[n] for n in choices)
    lines = ["", "## Formats of equal bits", "",
             f"{len(choices)} layers could store 8 bits two ways ({', '.join(names)}); chosen by {how}. "
             f"Chosen: " + ", ".join(f"{k} {v}" for k, v in sorted(won.items())) + ".", "",
             "| layer | chosen | " + " | ".join(f"error {n}" for n in names) + " |",
             "|---|---|" + "---:|" * len(names)]
    # the layers that took the less common choice first, then where the two formats differ most
    def order(kv):
        v = sorted(kv[1].values())
        return (won[chosen[kv[0]]], -v[-1] / max(v[0], 1e-30))
    for n, e in sorted(choices.items(), key=order)[:20]:
        lines.append(f"| `{n}` | {chosen[n]} | " + " | ".join(f"{e[f]:.3g}" if f in e else "—" for f in names) + " |")
    if len(choices) > 20:
        lines.append(f"| ... {len(choices) - 20} more in allocation.json | | " + " | " * (len(names) - 1) + " |")
    return lines


def _md_activation_costs(r: Report) -> list[str]:
    lines = []
    costs = r.calibration.activation_ranges.costliest
    if costs:
        lines += ["", "## Activation quantizers that cost the most", "",
                  "Each layer-input activation quantized alone to INT8 at its calibrated threshold (weights float); "
                  "noise-prediction SQNR at the profiled calibration steps (higher is better), the worst first:", "",
                  "| activation | read by | quantized in this model | SQNR alone (dB) | threshold | observed max |",
                  "|---|---|---|---:|---:|---:|"]
        lines += [f"| `{c.tensor}` | {', '.join(f'`{n}`' for n in c.layers[:3])}{' ...' if len(c.layers) > 3 else ''} | "
                  f"{'yes' if c.quantized_here else 'no'} | {c.sqnr_db:.2f} | {c.threshold:.4g} | "
                  f"{c.observed_max:.4g} |" for c in costs[:10]]
    return lines


def _md_stability_and_timings(r: Report) -> list[str]:
    lines = []
    if r.stability:
        lines += ["", "## Allocation stability", "", "Layers that change format when a setting changes (same budget):", "",
                  "| change | layers changed |", "|---|---:|"]
        lines += [f"| {c.change} | {c.layers_changed} |" for c in r.stability]
    rss = r.peak_rss_mb or {}
    lines += ["", "## Timings", "", "| stage | seconds | peak RSS during the stage (MB) |", "|---|---:|---:|"]
    lines += [f"| {k} | {t:.2f} | {_fmt(rss.get(k), 0)} |" for k, t in r.timings.items()]
    split = r.calibration.time_split or {}
    if split and not r.calibration.cached:
        lines += ["", "Calibration's time: " + ", ".join(f"{k.replace('_', ' ')} {t:.1f} s" for k, t in split.items())]
    return lines


def _md_layers(r: Report) -> list[str]:
    sens = any(l.sensitivity for l in r.layers)
    lines = ["", "## Layers", "", "| # | layer | op | params | format | bits | ORM importance |"
             + (f" {_measured_column(r.allocation.scorer)} at 4 / 8 bits |" if sens else "") + " weight SQNR (dB) |",
             "|---:|---|---|---:|---|---:|---:|" + ("---:|" if sens else "") + "---:|"]
    for i, l in enumerate(r.layers):
        s = l.sensitivity or {}
        s4 = next((v for k, v in s.items() if k.startswith("w4")), None)
        g = lambda v: "—" if v is None else f"{v:.3g}"  # noqa: E731
        sens_cell = f" {g(s4)} / {g(s.get('w8a8'))} |" if sens else ""
        fmt = f"{l.format} ({l.detail})" if l.detail else l.format
        bits = f"{l.stored_bits:.3g}" if l.stored_bits is not None else f"{l.weight_bits}"
        lines.append(f"| {i} | `{l.name}` | {l.op_type} | {l.params:,} | {fmt} | {bits} | "
                     f"{l.importance:.4g} |{sens_cell} {_fmt(l.weight_sqnr_db, 1)} |")
    return lines




def _measured_column(scorer: str) -> str:
    """The layer table's heading for the measured scores: what the scorer measured (sensitivity.py)."""
    return {Scorer.TRAJECTORY: "final-sample error", Scorer.PROBED: "probed gain x expected error",
            Scorer.ORM_ERROR: "ORM importance x expected error"}.get(Scorer(scorer), "noise-prediction error")


def _display_name(path: str) -> str:
    """The title's name for what the user gave: a UNet folder called unet/ is named with its parent."""
    name = os.path.basename(os.path.normpath(path))
    return f"{os.path.basename(os.path.dirname(os.path.normpath(path)))}/{name}" if name == "unet" else name
