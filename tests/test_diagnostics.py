"""diagnostics: what the report shows beside the result (activation costs, allocation stability, the target's
float graph alone and the same allocation on the comparison target)."""

import numpy as np

from mpq_export.formats import QuantizeSettings
from mpq_export.runtime.sampler import Trajectory
from mpq_export.stages.act_ranges import ActCalibSettings, choose_ranges
from mpq_export.stages.allocate import AllocationSettings, allocate, candidates
from mpq_export.stages.calibrate import sample_shape
from mpq_export.stages.diagnostics import (activation_costs, allocation_stability, compare_targets,
                                           float_graph_validation, importance_of)
from mpq_export.stages.orm import OrmSettings
from mpq_export.stages.validate import ValidationSettings, Validator
from mpq_export.targets import get_target


def test_activation_costs_cover_every_quantized_input_worst_first(calibrated):
    info, stats = calibrated
    ranges = choose_ranges(stats.act_hist, ActCalibSettings())
    costs, seconds = activation_costs(info, stats, ranges, samples=2)
    assert {c.tensor for c in costs} == {l.activation_input for l in info.layers if l.activation_input in ranges.amax}
    sqnr = [c.sqnr_db for c in costs]
    assert sqnr == sorted(sqnr) and all(np.isfinite(sqnr)) and sqnr[-1] > 20 and seconds > 0


def test_stability_counts_layers_that_move_and_none_without_a_change(calibrated):
    info, stats = calibrated
    imp = importance_of(stats, OrmSettings())
    cands = candidates(info.layers, "onnxruntime")
    base = allocate(info.layers, 6.0, "onnxruntime", theta=imp.theta, cands=cands)
    checks = allocation_stability(info, stats, OrmSettings(), imp, "onnxruntime", AllocationSettings(), cands, base)
    assert len(checks) == 5 and all(0 <= c.layers_changed <= len(info.layers) for c in checks)
    again = allocate(info.layers, 6.0, "onnxruntime", theta=importance_of(stats, OrmSettings()).theta, cands=cands)
    assert [f.name for f in again.formats] == [f.name for f in base.formats]


def test_float_graph_and_target_comparison_split_the_error(calibrated, tmp_path):
    """tensorrt's FP16 graph alone is close to FP32, the onnxruntime target has no float graph of its own, and
    the same allocation on the FP32 graph is written and validated."""
    info, stats = calibrated
    trajectory = Trajectory(stats.schedule, stats.settings.steps, stats.step_indices, sample_shape(info, None))
    validator = Validator.of(info, trajectory, ValidationSettings(samples=2))
    trt = get_target("tensorrt")
    fp16 = float_graph_validation(trt, validator)
    assert fp16 is not None and fp16.mean_sqnr_db > 40
    assert float_graph_validation(get_target("onnxruntime"), validator) is None
    ranges = choose_ranges(stats.act_hist, ActCalibSettings())
    alloc = allocate(info.layers, 8.0, trt, theta=np.ones(len(info.layers)))
    rows = compare_targets(trt, validator, alloc, ranges, QuantizeSettings(), stats, fp16, fp16)
    assert [r.validation is not None for r in rows] == [True, True, True]
    assert 10 < rows[1].validation.mean_sqnr_db < fp16.mean_sqnr_db
