
import numpy as np
import onnx
import pytest

from mpq_export.runtime.ort import RuntimeSettings

from mpq_export.stages.calibrate import CalibrationSettings, calibrate
from mpq_export.util.errors import MPQError
from mpq_export.stages.inspect import inspect_model
from mpq_export.runtime.ort import build_feeds, ort_session
from mpq_export.runtime.sampler import NoiseSchedule


def test_grams_are_exact_and_independent_of_fetch_grouping(unet_onnx, tmp_path):
    info = inspect_model(unet_onnx)
    s = CalibrationSettings(steps=6, timesteps=2, samples=6)
    one = calibrate(info, s, NoiseSchedule())
    many = calibrate(info, CalibrationSettings(steps=6, timesteps=2, samples=6, mem_budget_mb=1), NoiseSchedule())
    np.testing.assert_allclose(one.grams, many.grams, rtol=1e-10)
    # recompute one layer's Gram directly from the stored x_t
    layer = info.layer("mid_block.resnets.0.conv1")
    m = onnx.load(unet_onnx)
    m.graph.output.append(onnx.helper.make_empty_tensor_value_info(layer.output))
    sess = ort_session(m.SerializeToString())
    k = 1
    feeds = build_feeds(info, one.inputs["sample"][k], int(one.timesteps[k]), {})
    y = sess.run([layer.output], feeds)[0].reshape(6, -1).astype(np.float64)
    li = one.layer_names.index(layer.name)
    np.testing.assert_allclose(one.grams[k, li], y @ y.T, rtol=1e-5)
    np.testing.assert_allclose(one.outputs[k], sess.run([info.output], feeds)[0], rtol=1e-5)
    h = one.act_hist
    i = h.names.index("sample")
    np.testing.assert_allclose(h.amax[i], np.abs(one.inputs["sample"]).reshape(2, -1).max(1))
    np.testing.assert_allclose(h.counts[i].sum(1), one.inputs["sample"][0].size)  # every value counted, per step
    np.testing.assert_allclose(h.sumsq[i], (one.inputs["sample"].astype(np.float64) ** 2).reshape(2, -1).sum(1))
    # streamed histograms do not depend on how the fetches were grouped
    np.testing.assert_array_equal(one.act_hist.counts, many.act_hist.counts)


def test_cache_is_reused_and_keyed_by_settings(unet_onnx, tmp_path):
    info = inspect_model(unet_onnx)
    cache = str(tmp_path / "cache")
    s = CalibrationSettings(steps=5, timesteps=2, samples=4)
    first = calibrate(info, s, NoiseSchedule(), cache_dir=cache)
    again = calibrate(info, s, NoiseSchedule(), cache_dir=cache)
    other = calibrate(info, CalibrationSettings(steps=5, timesteps=2, samples=4, seed=1), NoiseSchedule(), cache_dir=cache)
    assert not first.cached and again.cached and not other.cached
    np.testing.assert_array_equal(first.grams, again.grams)
    assert not np.allclose(first.grams, other.grams)
    assert again.time_split == first.time_split  # where the time went is kept with the statistics


def test_time_split_accounts_for_the_calibration(unet_onnx):
    """Each part is timed once: none is negative, and together (hashing aside) they are the calibration's
    seconds; the GPTQ statistics are a part only when they are gathered."""
    info = inspect_model(unet_onnx)
    with_h = calibrate(info, CalibrationSettings(steps=5, timesteps=2, samples=4), NoiseSchedule())
    without = calibrate(info, CalibrationSettings(steps=5, timesteps=2, samples=4), NoiseSchedule(),
                        input_statistics=False)
    for stats in (with_h, without):
        split = stats.time_split
        assert {"hash", "session", "onnxruntime", "histograms", "grams", "other"} <= set(split)
        assert min(split.values()) >= 0 and split["onnxruntime"] > 0 and split["histograms"] > 0
        assert abs(sum(v for k, v in split.items() if k != "hash") - stats.seconds) < 1e-6
    assert with_h.time_split["gptq_statistics"] > 0 and "gptq_statistics" not in without.time_split


def test_conditioning_defaults_to_standard_normal_and_says_so(cond_unet_onnx):
    info = inspect_model(cond_unet_onnx)
    stats = calibrate(info, CalibrationSettings(steps=4, timesteps=2, samples=4), NoiseSchedule())
    assert "standard-normal" in stats.conditioning_source
    assert stats.inputs["encoder_hidden_states"].shape == (4, 8, 16)


def test_conditioning_from_file(cond_unet_onnx, tmp_path):
    info = inspect_model(cond_unet_onnx)
    f = tmp_path / "cond.npz"
    np.savez(f, encoder_hidden_states=np.ones((2, 8, 16), np.float32))
    stats = calibrate(info, CalibrationSettings(steps=4, timesteps=2, samples=4), NoiseSchedule(), calib_data=str(f))
    assert stats.conditioning_source.startswith("file")
    np.testing.assert_array_equal(stats.inputs["encoder_hidden_states"], 1.0)
    np.savez(f, wrong_name=np.ones((2, 8, 16), np.float32))
    with pytest.raises(MPQError, match="no array 'encoder_hidden_states'"):
        calibrate(info, CalibrationSettings(steps=4, timesteps=2, samples=4, seed=3), NoiseSchedule(), calib_data=str(f))


def test_gram_sketch_estimates_inner_products_and_keeps_small_rows_exact():
    from mpq_export.stages.calibrate import GramSketch

    rng = np.random.default_rng(0)
    base = rng.standard_normal((1, 40_000))
    y = (base + 0.5 * rng.standard_normal((6, 40_000))).astype(np.float32)  # correlated rows, as layer outputs are
    exact = y.astype(np.float64) @ y.T.astype(np.float64)
    sk = GramSketch(4096, seed=0)
    z = np.concatenate([sk.rows("t", y[:4]), sk.rows("t", y[4:])]).astype(np.float64)  # two calls, same signs
    assert z.shape == (6, 4096)
    err = np.abs(z @ z.T - exact) / np.sqrt(np.outer(np.diag(exact), np.diag(exact)))
    assert err.max() < 0.05  # ~ 1 / sqrt(4096) per entry
    small = rng.standard_normal((3, 100)).astype(np.float32)
    assert np.array_equal(sk.rows("u", small), small)  # D <= m: the rows themselves, exact Grams
    assert np.array_equal(GramSketch(0, seed=0).rows("t", y), y)  # 0: exact
    # unbiased: averaged over seeds the estimate converges on the exact inner product
    est = np.mean([(lambda z: z[0] @ z[1])(GramSketch(256, seed=s).rows("t", y[:2]).astype(np.float64))
                   for s in range(200)])
    assert abs(est - exact[0, 1]) < 0.02 * exact[0, 1]


def test_sketched_grams_move_orm_little(unet_onnx):
    """Calibration in chunks with sketched Grams against exact Grams of the same rows."""
    from mpq_export.stages.orm import OrmSettings, compute_importance

    info = inspect_model(unet_onnx)
    exact = calibrate(info, CalibrationSettings(steps=6, timesteps=2, samples=8), NoiseSchedule())
    assert exact.gram_sketch_dim == 0  # small: exact by default
    errors = []
    for m in (1024, 4096):
        sketched = calibrate(info, CalibrationSettings(steps=6, timesteps=2, samples=8, sketch_dim=m, gram_mem_mb=0,
                                                       mem_budget_mb=1), NoiseSchedule())
        assert sketched.gram_sketch_dim == m and sketched.rows_per_call < 8  # really sketched and chunked
        assert np.array_equal(exact.outputs, sketched.outputs)  # the trajectory does not depend on chunking
        rel = np.linalg.norm(sketched.grams - exact.grams, axis=(2, 3)) / np.linalg.norm(exact.grams, axis=(2, 3))
        a, b = (compute_importance(s.grams, s.timesteps, s.layer_names, OrmSettings()) for s in (exact, sketched))
        errors.append((rel.max(), np.abs(a.theta - b.theta).max()))
    (rel_1k, theta_1k), (rel_4k, theta_4k) = errors
    assert 0 < rel_4k < rel_1k < 0.15  # error shrinks with the sketch size
    assert theta_4k < theta_1k and theta_4k < 0.01  # this model's largest outputs are 4096 values: exact there


def test_statistics_with_gptq_inputs_serve_a_run_without_them_from_the_cache(unet_onnx, tmp_path):
    """Nearest rounding after a gptq run reuses its calibration; the other way round it cannot."""
    info = inspect_model(unet_onnx)
    s = CalibrationSettings(steps=5, timesteps=2, samples=4)
    with_h = calibrate(info, s, NoiseSchedule(), cache_dir=str(tmp_path / "a"))
    reused = calibrate(info, s, NoiseSchedule(), cache_dir=str(tmp_path / "a"), input_statistics=False)
    assert reused.cached and reused.hessians.keys() == with_h.hessians.keys() and with_h.hessians
    np.testing.assert_array_equal(reused.grams, with_h.grams)
    without = calibrate(info, s, NoiseSchedule(), cache_dir=str(tmp_path / "b"), input_statistics=False)
    again = calibrate(info, s, NoiseSchedule(), cache_dir=str(tmp_path / "b"))
    assert not without.cached and not without.hessians and not again.cached and again.hessians


def test_a_cached_entry_holds_no_machine_settings_and_serves_any_thread_count(unet_onnx, tmp_path):
    import json
    import os

    info = inspect_model(unet_onnx)
    cache = str(tmp_path / "cache")
    s = CalibrationSettings(steps=5, timesteps=2, samples=4)
    first = calibrate(info, s, NoiseSchedule(), cache_dir=cache, runtime=RuntimeSettings(threads=1))
    (entry,) = [os.path.join(cache, f) for f in os.listdir(cache) if f.startswith("calib-")]
    with np.load(entry) as z:
        meta = json.loads(str(z["meta"]))
    assert "threads" not in meta["settings"] and "device" not in meta["settings"]  # RuntimeSettings: not a result
    again = calibrate(info, s, NoiseSchedule(), cache_dir=cache, runtime=RuntimeSettings(threads=2))
    assert again.cached and np.array_equal(again.grams, first.grams)



def test_an_entry_of_another_model_under_this_name_is_recomputed(unet_onnx, cond_unet_onnx, tmp_path, caplog):
    """The entry's file name is a hash of what it was made from; a copied or renamed entry of another
    model (or other settings) under this name is found by comparing the identity stored inside."""
    import shutil

    cache = tmp_path / "cache"
    s = CalibrationSettings(steps=5, timesteps=2, samples=4)
    info = inspect_model(unet_onnx)
    mine = calibrate(info, s, NoiseSchedule(), cache_dir=str(cache))
    (entry,) = cache.glob("calib-*.npz")
    other = calibrate(info, CalibrationSettings(steps=5, timesteps=2, samples=4, seed=3), NoiseSchedule(),
                      cache_dir=str(cache))
    (foreign,) = [p for p in cache.glob("calib-*.npz") if p != entry]
    shutil.copy(foreign, entry)  # another calibration's statistics under this one's name
    again = calibrate(info, s, NoiseSchedule(), cache_dir=str(cache))
    assert not again.cached and "made from another model or other settings" in caplog.text
    np.testing.assert_array_equal(again.grams, mine.grams)
    assert not np.array_equal(other.grams, mine.grams)


def test_the_cache_key_names_which_input_is_the_sample(unet_onnx, tmp_path):
    """--sample-name changes what calibration computes: it is part of the entry's identity."""
    from mpq_export.stages.calibrate import cache_identity

    info = inspect_model(unet_onnx)
    s = CalibrationSettings(steps=5, timesteps=2, samples=4)
    a = cache_identity("sha", s, NoiseSchedule(), None, True, info)
    info.sample = info.timestep  # as if another input had been named the sample
    assert cache_identity("sha", s, NoiseSchedule(), None, True, info) != a


def test_a_damaged_entry_is_recomputed_with_a_warning(unet_onnx, tmp_path, caplog):
    cache = tmp_path / "cache"
    info = inspect_model(unet_onnx)
    s = CalibrationSettings(steps=5, timesteps=2, samples=4)
    calibrate(info, s, NoiseSchedule(), cache_dir=str(cache))
    (entry,) = cache.glob("calib-*.npz")
    entry.write_bytes(entry.read_bytes()[:1000])
    again = calibrate(info, s, NoiseSchedule(), cache_dir=str(cache))
    assert not again.cached and "ignoring unreadable cache" in caplog.text
