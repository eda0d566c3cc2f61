"""scores stage: per-layer, per-format scores from each format's expected error, e[i, f], scaled by how
much layer i's error matters, its gain g_i: s[i, f] = g_i e[i, f], minimised by the 0/1 program.

e[i, f] (stages/format_error.py) is read off calibration: the relative output error of the weight in that
format under the layer's input statistics, plus its input quantizer's. It is what tells an INT4 weight
with a low-rank branch from one without, or a smoothed INT8 input from a plain one, which the paper's
objective (bits x importance) cannot see. The gain says how a layer's relative error reaches the model's
output:
  orm-error  g_i = the ORM importance theta_i (the paper's measure of a layer; no forwards)
  probed     g_i = s_i / e[i, f0]: one measured probe per layer (its cheapest quantized format f0 alone,
             the noise-prediction error at every profiled step on PROBE_SAMPLES rows,
             stages/sensitivity.py) over that format's
             expected error; every other format of the layer then costs no forward. Probes scale with the
             number of layers, not layers x formats (the measured scorer's), which keeps a ladder of formats
             affordable on real-size models (docs/performance.md).
"""

from __future__ import annotations

import time

import numpy as np

from mpq_export.core.choices import Scorer
from mpq_export.core.model_info import ModelInfo
from mpq_export.formats import Format, QuantizeSettings
from mpq_export.stages.act_ranges import ActivationRanges
from mpq_export.stages.calibrate import CalibrationStats
from mpq_export.stages.format_error import expected_format_error
from mpq_export.stages.sensitivity import SensitivityScores, measure_sensitivity
from mpq_export.util.progress import log

# the probes of `probed`: every profiled step (the noise levels differ most between steps), two rows each
# (more rows moved the allocations little on the bundled DiT: docs/quality.md); a probe is a whole forward,
# so on models of many layers they can cost more than calibration: auto_scorer weighs that
PROBE_STEPS = None
PROBE_SAMPLES = 2
# --importance auto: probed while its probes' forwards stay within this multiple of calibration's (a probe
# forwards the same model as a calibration step does, so the ratio of forwards is the ratio of time whatever
# the model's size); past it orm-error, whose cost is the expected errors alone (docs/performance.md)
PROBE_COST_LIMIT = 2.0


def probe_forwards(cands: list[list[Format]], timesteps: int) -> int:
    """Model rows `probed` forwards: one probe per layer with a quantized format, at every profiled step
    (PROBE_STEPS), PROBE_SAMPLES rows each."""
    layers = sum(1 for c in cands if any(f.quantized for f in c))
    return layers * (timesteps if PROBE_STEPS is None else min(PROBE_STEPS, timesteps)) * PROBE_SAMPLES


def auto_scorer(cands: list[list[Format]], steps: int, timesteps: int, samples: int) -> tuple[Scorer, str]:
    """--importance auto: (the scorer, the report's note saying why). Calibration forwards every sample at
    every sampler step; guidance doubles the rows of both alike, so it drops out of the ratio."""
    probes, calibration = probe_forwards(cands, timesteps), max(steps * samples, 1)
    ratio = probes / calibration
    if ratio <= PROBE_COST_LIMIT:
        return Scorer.PROBED, (f"--importance auto: probed (its {probes} probe forwards are {ratio:.2f}x "
                               f"calibration's {calibration}, within {PROBE_COST_LIMIT:g}x)")
    return Scorer.ORM_ERROR, (f"--importance auto: orm-error, as probed's {probes} probe forwards would be "
                              f"{ratio:.1f}x calibration's {calibration}, more than {PROBE_COST_LIMIT:g}x "
                              f"(--importance probed probes anyway)")


def error_scores(info: ModelInfo, stats: CalibrationStats, ranges: ActivationRanges, cands: list[list[Format]],
                 settings: QuantizeSettings, scorer: Scorer, theta: np.ndarray | None = None, alpha: float = 1.0,
                 cache_dir: str | None = None, runtime=None) -> SensitivityScores:
    """s[layer][format] = g_i e[i, f] for every candidate (0 for the float ones); see the module's docstring."""
    t0 = time.perf_counter()
    quantized = {l.name: [f for f in c if f.quantized] for l, c in zip(info.layers, cands)}
    errors = expected_format_error(info, {n: fs for n, fs in quantized.items() if fs}, stats, ranges, settings)
    if scorer is Scorer.ORM_ERROR:
        if theta is None:
            raise ValueError("internal: orm-error needs the ORM importance")
        gains = {l.name: float(theta[i]) for i, l in enumerate(info.layers)}
    elif scorer is Scorer.PROBED:
        base = [[fs[0]] if fs else [] for fs in quantized.values()]  # each layer's cheapest quantized format
        kwargs = {"runtime": runtime} if runtime is not None else {}
        probe = measure_sensitivity(info, stats, ranges, base, settings, alpha, cache_dir, samples=PROBE_SAMPLES,
                                    steps=PROBE_STEPS, **kwargs)
        gains = {}
        for l, fs in zip(info.layers, base):
            e0 = errors.get(l.name, {}).get(fs[0].name, 0.0) if fs else 0.0
            gains[l.name] = probe.scores[l.name][fs[0].name] / e0 if fs and e0 > 0 else 0.0
    else:
        raise ValueError(f"internal: {scorer} is not an error-model scorer")
    scores = {l.name: {f.name: gains[l.name] * errors[l.name][f.name] if f.quantized else 0.0 for f in c}
              for l, c in zip(info.layers, cands)}
    seconds = time.perf_counter() - t0
    log.info("[scores] %s: expected errors of %d layer formats, %.1fs", scorer,
             sum(len(e) for e in errors.values()), seconds)
    return SensitivityScores(scores=scores, samples=0, seconds=seconds, scorer=scorer)
