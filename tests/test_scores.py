"""scores: a per-layer gain times each format's expected error. For probed, the score of the format each layer
was probed at is the measured error itself, and the others scale with their expected errors; for orm-error
the gain is the ORM importance."""

import numpy as np
import pytest

from mpq_export.core.choices import Scorer
from mpq_export.formats import QuantizeSettings
from mpq_export.stages.act_ranges import ActCalibSettings, choose_ranges
from mpq_export.stages.allocate import allocate, candidates
from mpq_export.stages.diagnostics import importance_of
from mpq_export.stages.format_error import expected_format_error
from mpq_export.stages.orm import OrmSettings
from mpq_export.stages.scores import PROBE_SAMPLES, error_scores
from mpq_export.stages.sensitivity import measure_sensitivity


def test_probed_scores_are_the_probe_at_its_format_and_scale_with_the_expected_error(calibrated, tmp_path):
    info, stats = calibrated
    ranges = choose_ranges(stats.act_hist, ActCalibSettings())
    cands = candidates(info.layers, "onnxruntime")[0]
    qs = QuantizeSettings(rounding="nearest")
    s = error_scores(info, stats, ranges, cands, qs, Scorer.PROBED, cache_dir=str(tmp_path))
    errors = expected_format_error(info, {l.name: [f for f in c if f.quantized] for l, c in zip(info.layers, cands)},
                                   stats, ranges, qs)
    base = [[f for f in c if f.quantized][:1] for c in cands]  # each layer's cheapest quantized format
    probe = measure_sensitivity(info, stats, ranges, base, qs, OrmSettings().alpha, str(tmp_path), samples=PROBE_SAMPLES)
    for l, c, b in zip(info.layers, cands, base):
        if not b:  # pinned to FP16
            continue
        f0 = b[0]
        assert s.scores[l.name][f0.name] == pytest.approx(probe.scores[l.name][f0.name], rel=1e-9)
        for f in c:
            if f.quantized and errors[l.name][f0.name] > 0:
                ratio = errors[l.name][f.name] / errors[l.name][f0.name]
                assert s.scores[l.name][f.name] == pytest.approx(s.scores[l.name][f0.name] * ratio, rel=1e-9)
            elif not f.quantized:
                assert s.scores[l.name][f.name] == 0.0
    a = allocate(info.layers, 6.0, "onnxruntime", sensitivity=s.scores, measured_by=s.scorer)
    assert a.scorer is Scorer.PROBED and a.within_budget


def test_orm_error_is_importance_times_expected_error(calibrated):
    info, stats = calibrated
    ranges = choose_ranges(stats.act_hist, ActCalibSettings())
    cands = candidates(info.layers, "tensorrt")[0]
    theta = importance_of(stats, OrmSettings()).theta
    s = error_scores(info, stats, ranges, cands, QuantizeSettings(rounding="nearest"), Scorer.ORM_ERROR, theta)
    errors = expected_format_error(info, {l.name: [f for f in c if f.quantized] for l, c in zip(info.layers, cands)},
                                   stats, ranges, QuantizeSettings(rounding="nearest"))
    for i, (l, c) in enumerate(zip(info.layers, cands)):
        for f in c:
            want = theta[i] * errors[l.name][f.name] if f.quantized else 0.0
            assert s.scores[l.name][f.name] == pytest.approx(want, rel=1e-9)
    assert np.isfinite([v for d in s.scores.values() for v in d.values()]).all()


def test_auto_takes_probed_while_its_probes_cost_at_most_twice_calibrations_forwards(calibrated):
    from mpq_export.stages.scores import PROBE_COST_LIMIT, auto_scorer, probe_forwards

    info, _ = calibrated
    cands = candidates(info.layers, "tensorrt")[0]
    probed_layers = sum(1 for c in cands if any(f.quantized for f in c))
    assert 0 < probed_layers < len(cands)  # conv_in / conv_out pinned to FP16 are not probed
    assert probe_forwards(cands, 10) == probed_layers * 10 * PROBE_SAMPLES
    # calibration's forwards: steps x samples; at the limit exactly, probed; one sample fewer, orm-error
    probes = probe_forwards(cands, 10)
    steps = 50
    samples_at_limit = probes / (PROBE_COST_LIMIT * steps)
    scorer, why = auto_scorer(cands, steps, 10, int(np.ceil(samples_at_limit)))
    assert scorer is Scorer.PROBED and "probed" in why
    scorer, why = auto_scorer(cands, steps, 10, int(np.ceil(samples_at_limit)) - 1)
    assert scorer is Scorer.ORM_ERROR and f"{probes} probe forwards" in why and "--importance probed" in why
    # the default calibration (50 steps, 10 profiled, 32 samples) buys the probes of this model
    assert auto_scorer(cands, 50, 10, 32)[0] is Scorer.PROBED
