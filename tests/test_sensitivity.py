"""The sensitivity scorer on a model with a known answer."""

from dataclasses import replace

import numpy as np
import pytest

from mpq_export.runtime.ort import RuntimeSettings

import models
from mpq_export.stages.act_ranges import ActCalibSettings, choose_ranges
from mpq_export.stages.allocate import allocate, candidates
from mpq_export.stages.calibrate import CalibrationSettings, calibrate
from mpq_export.stages.inspect import inspect_model
from mpq_export.formats import QuantizeSettings
from mpq_export.runtime.sampler import NoiseSchedule
from mpq_export.stages.sensitivity import measure_sensitivity

VICTIM = "mid_block.resnets.0.conv1"


@pytest.fixture(scope="module")
def sabotaged(tmp_path_factory):
    """A UNet whose VICTIM conv has one huge weight per output channel: 4-bit per-channel scales then
    round every other weight of that layer to zero, so the layer is far more sensitive than the rest."""
    torch = pytest.importorskip("torch")
    unet = models.tiny_unet2d(seed=5)
    conv = dict(unet.named_modules())[VICTIM]
    with torch.no_grad():
        conv.weight[:, 0, 1, 1] = conv.weight.abs().amax(dim=(1, 2, 3)) * 30
    path = models.export(unet, str(tmp_path_factory.mktemp("sabotaged")))
    info = inspect_model(path)
    stats = calibrate(info, CalibrationSettings(steps=10, timesteps=4, samples=8), NoiseSchedule())
    return info, stats


def test_artificially_sensitive_layer_gets_the_high_bits(sabotaged, tmp_path):
    info, stats = sabotaged
    s = candidates(info.layers, "onnxruntime")[0]
    amax = choose_ranges(stats.act_hist, ActCalibSettings())
    sens = measure_sensitivity(info, stats, amax, s, QuantizeSettings(), alpha=1.0, cache_dir=str(tmp_path))
    gain = {n: v["w4a8"] - v["w8a8"] for n, v in sens.scores.items() if "w4a8" in v}
    assert max(gain, key=gain.get) == VICTIM
    assert all(v["w8a8"] <= v.get("w4a8", v.get("w4a16", np.inf)) for v in sens.scores.values() if "w8a8" in v)
    assert sens.scores["conv_in"] == {"fp16": 0.0}  # pinned: nothing to measure
    alloc = allocate(info.layers, 4.6, "onnxruntime", sensitivity=sens.scores)
    assert alloc.format_of(VICTIM).weight_bits == 8
    assert alloc.achieved_bits <= 4.6
    again = measure_sensitivity(info, stats, amax, s, QuantizeSettings(), alpha=1.0, cache_dir=str(tmp_path))
    assert again.cached and again.scores == sens.scores
    # another --threads or --calib-mem-mb measures the same: the cached scores serve it
    other_machine = replace(stats, settings=replace(stats.settings, mem_budget_mb=64))
    again = measure_sensitivity(info, other_machine, amax, s, QuantizeSettings(), alpha=1.0, cache_dir=str(tmp_path),
                                runtime=RuntimeSettings(threads=1))
    assert again.cached and again.scores == sens.scores


def test_trajectory_objective_finds_the_sensitive_layer_by_its_final_samples(sabotaged, tmp_path):
    """--importance trajectory: the whole sampler per probe; its scores are the final sample's relative error."""
    info, stats = sabotaged
    s = candidates(info.layers, "onnxruntime")[0]
    amax = choose_ranges(stats.act_hist, ActCalibSettings())
    traj = measure_sensitivity(info, stats, amax, s, QuantizeSettings(), alpha=1.0, cache_dir=str(tmp_path),
                               scorer="trajectory", samples=4)
    gain = {n: v["w4a8"] - v["w8a8"] for n, v in traj.scores.items() if "w4a8" in v}
    assert traj.scorer == "trajectory" and max(gain, key=gain.get) == VICTIM
    assert 0 < traj.scores[VICTIM]["w8a8"] < traj.scores[VICTIM]["w4a8"]
    assert allocate(info.layers, 4.6, "onnxruntime", sensitivity=traj.scores).format_of(VICTIM).weight_bits == 8
    step = measure_sensitivity(info, stats, amax, s, QuantizeSettings(), alpha=1.0, cache_dir=str(tmp_path), samples=4)
    assert not step.cached and step.scores != traj.scores  # the objective is part of the cache key
    again = measure_sensitivity(info, stats, amax, s, QuantizeSettings(), alpha=1.0, cache_dir=str(tmp_path),
                                scorer="trajectory", samples=4)
    assert again.cached and again.scores == traj.scores and again.scorer == "trajectory"


def test_probes_read_external_weights_from_the_models_folder(sabotaged, tmp_path):
    """Stable-Diffusion-size models keep their weights in .data files and cannot be serialised as one
    proto (2 GB): the probe graph goes to onnxruntime without them. Same figures as the embedded model."""
    import onnx

    from mpq_export.stages.diagnostics import activation_costs

    info, stats = sabotaged
    ext = str(tmp_path / "external.onnx")
    onnx.save(onnx.load(info.path), ext, save_as_external_data=True, all_tensors_to_one_file=True,
              location="external.onnx.data", size_threshold=0)
    info_ext = inspect_model(ext)
    assert info_ext.has_external_data
    amax = choose_ranges(stats.act_hist, ActCalibSettings())
    a, _ = activation_costs(info, stats, amax, samples=2)
    b, _ = activation_costs(info_ext, stats, amax, samples=2)
    assert [c.tensor for c in a] == [c.tensor for c in b]
    np.testing.assert_allclose([c.sqnr_db for c in a], [c.sqnr_db for c in b], rtol=1e-6)
    qs = QuantizeSettings(rounding="nearest")
    alloc = candidates(info.layers, "onnxruntime")[0]
    s1 = measure_sensitivity(info, stats, amax, alloc, qs, 0.0, None)
    s2 = measure_sensitivity(info_ext, stats, amax, alloc, qs, 0.0, None)
    assert s1.scores[VICTIM] == pytest.approx(s2.scores[VICTIM], rel=1e-6)


def test_trajectory_objective_under_guidance_runs_both_branches(cond_unet_onnx, tmp_path):
    """Under classifier-free guidance calibration holds two UNet rows per sample; the trajectories take
    whole samples (both rows) and run the guided sampler."""
    info = inspect_model(cond_unet_onnx)
    rng = np.random.default_rng(0)
    path = str(tmp_path / "c.npz")
    np.savez(path, encoder_hidden_states=rng.standard_normal((4, 8, 16)).astype(np.float32),
             uncond_encoder_hidden_states=np.zeros((1, 8, 16), np.float32))
    stats = calibrate(info, CalibrationSettings(steps=4, timesteps=2, samples=4, guidance_scale=3.0),
                      NoiseSchedule(), calib_data=path)
    assert stats.n_samples == 8  # rows: both branches of 4 samples
    s = candidates(info.layers, "onnxruntime")[0]
    amax = choose_ranges(stats.act_hist, ActCalibSettings())
    traj = measure_sensitivity(info, stats, amax, s, QuantizeSettings(), alpha=1.0, scorer="trajectory")
    quantized = [v for v in traj.scores.values() if "w8a8" in v]
    assert quantized and all(0 < v["w8a8"] for v in quantized)
    four = [v for v in quantized if "w4a8" in v or "w4a16" in v]  # the time embedding is held at 8 bits
    assert four and np.median([v.get("w4a8", v.get("w4a16")) / v["w8a8"] for v in four]) > 1


def test_a_full_disk_while_caching_scores_is_a_warning_and_leaves_no_temporary(tmp_path, monkeypatch, caplog):
    """The probes' scores are kept even when the cache cannot take them (the run goes on)."""
    import errno

    import mpq_export.util.cache as cache_mod

    def full(obj, f):
        f.write("{")  # a partial file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_mod.json, "dump", full)
    path = tmp_path / "cache" / "sens-x.json"
    assert not cache_mod.write_json_entry(str(path), {"conv": {"w8a8": 1.0}}, "sensitivity cache")
    assert "could not write the sensitivity cache" in caplog.text and "No space left" in caplog.text
    assert list((tmp_path / "cache").iterdir()) == []


@pytest.fixture(scope="module")
def score_cache_entry(sabotaged, tmp_path_factory):
    """One measured score-cache entry (its text and scores), for the damage cases to start from."""
    info, stats = sabotaged
    s = candidates(info.layers, "onnxruntime")[0]
    amax = choose_ranges(stats.act_hist, ActCalibSettings())
    cache = tmp_path_factory.mktemp("scores")
    first = measure_sensitivity(info, stats, amax, s, QuantizeSettings(rounding="nearest"), 1.0, str(cache), samples=4)
    (entry,) = cache.glob("sens-*.json")
    return entry.name, entry.read_text(), first.scores


@pytest.mark.parametrize("damage", ["truncated", "empty_object", "other_identity", "missing_layer"])
def test_a_damaged_or_foreign_score_cache_is_measured_again(sabotaged, score_cache_entry, tmp_path, caplog, damage):
    """Every cache entry is checked before use: a cut-short file, `{}`, another run's scores under this
    name, or scores missing a layer are measured again (with a warning), never trusted nor fatal."""
    import json

    info, stats = sabotaged
    s = candidates(info.layers, "onnxruntime")[0]
    amax = choose_ranges(stats.act_hist, ActCalibSettings())
    name, text, scores = score_cache_entry
    cache = tmp_path / "cache"
    cache.mkdir()
    entry = cache / name
    d = json.loads(text)
    if damage == "truncated":
        entry.write_text(text[: len(text) // 2])
    elif damage == "empty_object":
        entry.write_text("{}")
    elif damage == "other_identity":
        d["identity"]["alpha"] = 0.5
        entry.write_text(json.dumps(d))
    else:
        del d["scores"][info.layers[3].name]
        entry.write_text(json.dumps(d))
    again = measure_sensitivity(info, stats, amax, s, QuantizeSettings(rounding="nearest"), 1.0, str(cache), samples=4)
    assert not again.cached and "[sensitivity] ignoring" in caplog.text
    assert again.scores == scores
    third = measure_sensitivity(info, stats, amax, s, QuantizeSettings(rounding="nearest"), 1.0, str(cache), samples=4)
    assert third.cached  # the entry was healed
