"""Hostile but fair inputs: each gets one error line (or works), no traceback, and nothing of the
user's is lost or reused stale."""

import json
import os
import shutil

import numpy as np
import onnx
import pytest
from conftest import run_cli
from onnx import numpy_helper

FAST = ["--steps", "4", "--timesteps", "2", "--samples", "4", "--val-samples", "2", "--target", "onnxruntime",
        "--no-stability", "--no-act-costs", "--budget", "6"]


def _one_line_error(code, err, *needles):
    assert code not in (0, None), err
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("mpq-export: error:"), err
    assert "Traceback" not in err, err
    for n in needles:
        assert n in lines[-1], (n, lines[-1])


def _with_external_data(src: str, path) -> str:
    """A copy of the model at `path` with every weight in PATH.data beside it."""
    onnx.save(onnx.load(src), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location=os.path.basename(str(path)) + ".data", size_threshold=0)
    return path


def _tree(folder):
    return sorted((os.path.relpath(os.path.join(d, f), folder), open(os.path.join(d, f), "rb").read())
                  for d, _, files in os.walk(folder) for f in files)


@pytest.mark.parametrize("layout", ["report_json_of_someone_else", "our_report_plus_a_user_file", "unrelated_files"])
def test_a_users_folder_is_never_replaced(unet_onnx, tmp_path, layout):
    out = tmp_path / "project"
    out.mkdir()
    if layout == "report_json_of_someone_else":
        (out / "report.json").write_text('{"quarterly": "numbers"}')
    elif layout == "our_report_plus_a_user_file":
        (out / "report.json").write_text('{"tool": "mpq-export"}')
        (out / "thesis.tex").write_text("years of work")
    else:
        (out / "notes.txt").write_text("keep me")
    before = _tree(out)
    _one_line_error(*run_cli(unet_onnx, "-o", out, *FAST)[::2], "did not write")
    assert _tree(out) == before


def test_an_earlier_output_is_replaced_whole(unet_onnx, tmp_path):
    out = tmp_path / "o"
    code, _, err = run_cli(unet_onnx, "-o", out, *FAST)
    assert code == 0, err
    first = json.loads((out / "report.json").read_text())
    code, _, err = run_cli(unet_onnx, "-o", out, *FAST[:-1], "7")
    assert code == 0, err
    assert json.loads((out / "report.json").read_text())["budget"] == 7 != first["budget"]
    assert not [p for p in tmp_path.iterdir() if p.name != "o"]  # no .old / .tmp folders left behind


def test_a_rerun_replaces_the_earlier_output_whole_whatever_its_budgets(unet_onnx, tmp_path):
    """A single-budget output, then a budget list, then another list into the same -o: each run's folder
    holds that run's outputs only (never a budget folder of the run before beside its own)."""
    out = tmp_path / "o"
    out.mkdir()  # an earlier single-budget output of ours (its files, its report's tool field)
    for name in ("model.mpq.onnx", "report.md"):
        (out / name).write_text("x")
    (out / "report.json").write_text('{"tool": "mpq-export"}')
    code, _, err = run_cli(unet_onnx, "-o", out, *FAST[:-1], "6,7")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["budget-6", "budget-7"]
    assert not (out / "report.json").exists()
    code, _, err = run_cli(unet_onnx, "-o", f"{out}/", *FAST[:-1], "7,8")  # "out/", as a user types it
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["budget-7", "budget-8"]
    assert [r["budget"] for r in json.loads((out / "summary.json").read_text())] == [7, 8]
    assert not [p for p in tmp_path.iterdir() if p.name != "o"]  # no .old / .tmp folders left behind


def test_an_empty_folder_made_for_the_output_is_used(unet_onnx, tmp_path):
    out = tmp_path / "made"
    out.mkdir()
    code, _, err = run_cli(unet_onnx, "-o", out, *FAST)
    assert code == 0, err
    assert (out / "model.mpq.onnx").exists() and (out / "report.json").exists()


def test_unmatched_pin_patterns_are_named_in_a_warning_and_the_report(unet_onnx, tmp_path):
    code, _, err = run_cli(unet_onnx, "-o", tmp_path / "o", *FAST, "--keep-fp16", "no_such_layer", "--min8", "conv_in")
    assert code == 0, err
    assert "--keep-fp16 'no_such_layer' matches no layer" in err
    assert any("no_such_layer" in n for n in json.loads((tmp_path / "o" / "report.json").read_text())["notes"])


def test_a_cache_inside_the_output_folder_is_refused_before_any_work(unet_onnx, tmp_path):
    out = tmp_path / "d"
    code, _, err = run_cli(unet_onnx, "-o", out, "--cache-dir", out / "cache", *FAST)
    _one_line_error(code, err, "inside the output folder", "--cache-dir")
    assert "[calibrate]" not in err and not out.exists()


@pytest.mark.parametrize("args,needles", [
    (["-o", "."], ["working directory"]),
    (["-o", ""], ["-o is empty"]),
    (["--calib-data", "missing.npz"], ["--calib-data file not found"]),
    (["--budget", "nan"], ["finite"]),
    (["--budget", "8,8"], ["--budget lists 8 twice; give each budget once"]),
    (["--budget", "8,8.0000001"], ["which name one output"]),  # both would write budget-8/
    (["--act-calib", "percentile", "--act-percentile", "100"], ["--act-percentile"]),
    (["--act-percentile", "99.9"], ["--act-percentile is used only with --act-calib percentile"]),
    (["--keep-fp16", "["], ["--keep-fp16 '[' is not a regular expression", "escape"]),
    (["--min8", "("], ["--min8 '(' is not a regular expression"]),
    (["--seed", "3"], ["--seed is the seed of --allocation random", "this run: --allocation mpq"]),
    (["--target", "tensorrt", "--float-conv-outputs"], ["--float-conv-outputs changes the onnxruntime target"]),
    (["--allocation", "uniform", "--importance", "sensitivity"], ["--importance sensitivity scores layers for "
                                                                  "--allocation mpq"]),
    (["--target", "tensorrt", "--block-size", "32"], ["--block-size 32", "TensorRT"]),
    (["--allocation", "random", "--seed", "-1"], ["--seed must be an integer >= 0"]),
    (["--calib-seed", "-1"], ["--calib-seed must be an integer >= 0"]),
    (["--threads", "-1"], ["--threads must be an integer >= 0"]),
    (["--threads", "100000"], ["--threads 100000 is more than 4 per core", "or 0 for one per core"]),
    (["--alpha", "nan"], ["--alpha must be a finite number"]),
    (["--seq-len", "77"], ["--seq-len 77 is given but the model has no conditioning inputs"]),
    (["--alpha", "1e308"], ["--alpha must be a finite number in [-100, 100]"]),
    (["--beta", "inf"], ["--beta must be a finite positive number"]),
    (["--keep-fp16", ".*"], ["every layer is held FP16", "--keep-fp16"]),
    (["--bits", "4,8,16", "--budget", "8,16"], ["at --budget 16 every layer stays FP16", "pick a budget below"]),
    (["--val-seed", "-1"], ["--val-seed must be an integer >= 0"]),
    (["--sample-name", "timestep"], ["--sample-name 'timestep' is a rank-1", "4-D float"]),
    (["--timestep-name", "sample"], ["named as both the sample and the timestep"]),
])
def test_bad_options_are_one_line_errors(unet_onnx, tmp_path, monkeypatch, args, needles):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("x")
    _one_line_error(*run_cli(unet_onnx, *FAST, *args)[::2], *needles)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_missing_external_data_is_one_line(unet_onnx, tmp_path):
    path = _with_external_data(unet_onnx, tmp_path / "ext.onnx")
    os.remove(tmp_path / "ext.onnx.data")
    _one_line_error(*run_cli(path, "-o", tmp_path / "o", *FAST)[::2], "ext.onnx.data")
    assert not (tmp_path / "o").exists()


def test_empty_file_is_not_called_a_model(tmp_path):
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    _one_line_error(*run_cli(empty, "-o", tmp_path / "o", *FAST)[::2], "no graph")


def test_a_folder_holding_unet_and_scheduler_points_at_its_unet(tmp_path):
    (tmp_path / "saved" / "unet").mkdir(parents=True)
    (tmp_path / "saved" / "unet" / "config.json").write_text('{"_class_name": "UNet2DModel"}')
    _one_line_error(*run_cli(tmp_path / "saved", "-o", tmp_path / "o", *FAST)[::2], "holds a diffusers UNet: give",
                    str(tmp_path / "saved" / "unet"))
    assert not (tmp_path / "o").exists()


def test_a_folder_holding_one_onnx_file_names_it(unet_onnx, tmp_path):
    (tmp_path / "export").mkdir()
    shutil.copy(unet_onnx, tmp_path / "export" / "unet.onnx")
    _one_line_error(*run_cli(tmp_path / "export", "-o", tmp_path / "o", *FAST)[::2], "give the ONNX file it holds",
                    str(tmp_path / "export" / "unet.onnx"))
    assert not (tmp_path / "o").exists()


def test_a_fine_tuned_model_with_identical_sizes_never_reuses_statistics(unet_onnx, tmp_path):
    """Same graph, same external-data file sizes, other weights: the calibration cache must miss."""
    from mpq_export.stages.calibrate import CalibrationSettings, calibrate
    from mpq_export.stages.inspect import inspect_model
    from mpq_export.runtime.sampler import NoiseSchedule

    cache = str(tmp_path / "cache")
    paths = []
    for k, scale in enumerate((1.0, 1.01)):
        m = onnx.load(unet_onnx)
        for init in m.graph.initializer:
            if init.data_type == onnx.TensorProto.FLOAT and len(init.dims) == 4:
                init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(scale), init.name))
        d = tmp_path / f"m{k}"
        d.mkdir()
        onnx.save(m, str(d / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                  location="model.onnx.data", size_threshold=0)
        paths.append(str(d / "model.onnx"))
    assert os.path.getsize(paths[0]) == os.path.getsize(paths[1])
    assert os.path.getsize(paths[0] + ".data") == os.path.getsize(paths[1] + ".data")
    s = CalibrationSettings(steps=4, timesteps=2, samples=4)
    a = calibrate(inspect_model(paths[0]), s, NoiseSchedule(), cache_dir=cache)
    b = calibrate(inspect_model(paths[1]), s, NoiseSchedule(), cache_dir=cache)
    again = calibrate(inspect_model(paths[1]), s, NoiseSchedule(), cache_dir=cache)
    assert not a.cached and not b.cached and again.cached
    assert a.model_sha256 != b.model_sha256


def test_an_unwritable_cache_does_not_fail_the_run(unet_onnx, tmp_path):
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    code, _, err = run_cli(unet_onnx, "-o", tmp_path / "o", "--cache-dir", blocker, *FAST)
    assert code == 0, err
    assert (tmp_path / "o" / "report.json").exists()


def _write(path, text):
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("case,needles", [
    ("sched_not_object", ["not a JSON object"]),
    ("sched_string_T", ["num_train_timesteps", "integer"]),
    ("sched_float_T", ["num_train_timesteps", "integer"]),
    ("sched_absurd_betas", ["beta_start"]),
    ("calib_npy", ["no conditioning inputs"]),
    ("seq_len_0", ["--seq-len must be positive"]),
    ("timesteps_over_steps", ["exceeds --steps"]),
])
def test_bad_side_files_and_options(unet_onnx, tmp_path, case, needles):
    extra = {
        "sched_not_object": lambda: ["--scheduler-config", _write(tmp_path / "s.json", "[1, 2]")],
        "sched_string_T": lambda: ["--scheduler-config", _write(tmp_path / "s.json", '{"num_train_timesteps": "1000"}')],
        "sched_float_T": lambda: ["--scheduler-config", _write(tmp_path / "s.json", '{"num_train_timesteps": 999.5}')],
        "sched_absurd_betas": lambda: ["--scheduler-config", _write(tmp_path / "s.json", '{"beta_start": 5, "beta_end": 9}')],
        "calib_npy": lambda: ["--calib-data", str(tmp_path / "c.npy")],
        "seq_len_0": lambda: ["--seq-len", "0"],
        "timesteps_over_steps": lambda: ["--steps", "3", "--timesteps", "5"],
    }[case]()
    if case == "calib_npy":
        np.save(tmp_path / "c.npy", np.zeros((2, 8, 16), np.float32))
    _one_line_error(*run_cli(unet_onnx, "-o", tmp_path / "o", *FAST, *extra)[::2], *needles)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("case,needles", [
    ("npy", ["single array"]),
    ("zero_rows", ["no rows"]),
    ("strings", ["numeric"]),
    ("wrong_shape", ["dimension 2 must be 16"]),
    ("nan", ["NaN"]),
    ("ragged", ["object array", "equal rows"]),
])
def test_bad_conditioning_files(cond_unet_onnx, tmp_path, case, needles):
    f = tmp_path / ("c.npy" if case == "npy" else "c.npz")
    arr = {"npy": None, "zero_rows": np.zeros((0, 8, 16), np.float32), "strings": np.array([["a"] * 16] * 8)[None],
           "wrong_shape": np.zeros((2, 8, 15), np.float32), "nan": np.full((2, 8, 16), np.nan, np.float32),
           "ragged": np.array([np.zeros((8, 16)), np.zeros((7, 16))], dtype=object)}[case]
    if case == "npy":
        np.save(f, np.zeros((2, 8, 16), np.float32))
    else:
        np.savez(f, encoder_hidden_states=arr)
    _one_line_error(*run_cli(cond_unet_onnx, "-o", tmp_path / "o", *FAST, "--calib-data", f)[::2], *needles)
    assert not (tmp_path / "o").exists()


def test_runtime_failures_of_onnxruntime_are_one_line(unet_onnx, tmp_path):
    # a resolution the UNet cannot run (its down/up-sampling needs multiples of 4 here)
    _one_line_error(*run_cli(unet_onnx, "-o", tmp_path / "o", *FAST, "--resolution", "7")[::2],
                    "onnxruntime cannot run the model", "--resolution")
    assert not (tmp_path / "o").exists()


def _one_conv_model(path, dtype=np.float32, out_channels: int = 1) -> str:
    """sample [b, 1, 8, 8] -> one 1x1 Conv -> y [b, out_channels, 8, 8], plus an unused timestep input."""
    from onnx import helper

    et = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    x = helper.make_tensor_value_info("sample", et, ["b", 1, 8, 8])
    t = helper.make_tensor_value_info("timestep", et, ["b"])
    y = helper.make_tensor_value_info("y", et, ["b", out_channels, 8, 8])
    w = numpy_helper.from_array(np.ones((out_channels, 1, 1, 1), dtype), "w")
    g = helper.make_graph([helper.make_node("Conv", ["sample", "w"], ["y"])], "g", [x, t], [y], [w])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return str(path)


def test_fp16_input_model_is_refused_up_front(tmp_path):
    path = _one_conv_model(tmp_path / "fp16.onnx", np.float16)
    _one_line_error(*run_cli(path, "-o", tmp_path / "o", *FAST)[::2], "FP32")


def test_unexpected_failures_are_one_line_with_a_pointer_to_verbose(unet_onnx, tmp_path, monkeypatch):
    import mpq_export.pipeline as pipeline_mod

    def boom(*a, **k):
        raise ValueError("something nobody foresaw\nsecond line")

    monkeypatch.setattr(pipeline_mod, "importance_of", boom)
    code, _, err = run_cli(unet_onnx, "-o", tmp_path / "o", *FAST)
    _one_line_error(code, err, "ValueError", "something nobody foresaw", "-v")
    assert "second line" not in err
    with pytest.raises(ValueError):
        run_cli(unet_onnx, "-o", tmp_path / "o", *FAST, "-v")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("where", ["/proc/mpq-out", "/sys/mpq-out"])
def test_unwritable_output_locations_fail_before_calibration(unet_onnx, tmp_path, where):
    code, _, err = run_cli(unet_onnx, "-o", where, *FAST)
    _one_line_error(code, err, "cannot write the output folder")
    assert "[calibrate]" not in err


def test_an_allocation_that_quantizes_nothing_is_a_clear_error(unet_onnx, tmp_path):
    code, _, err = run_cli(unet_onnx, "-o", tmp_path / "o", *FAST[:-1], "16", "--bits", "4,8,16", "--keep-fp16", ".*")
    _one_line_error(code, err, "nothing to quantize")
    assert not (tmp_path / "o").exists()


def test_no_cache_leaves_no_export_behind(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    import tempfile

    import models

    unet = tmp_path / "unet"
    models.tiny_unet2d(channels=(8, 16), attention=False).save_pretrained(str(unet))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    code, _, err = run_cli(unet, "-o", tmp_path / "o", *FAST, "--no-cache")
    assert code == 0, err
    assert [p.name for p in scratch.iterdir()] == []  # the export made for this run is gone


def test_a_damaged_cached_export_is_made_again(tmp_path):
    pytest.importorskip("torch")
    import models

    unet = tmp_path / "unet"
    models.tiny_unet2d(channels=(8, 16), attention=False).save_pretrained(str(unet))
    cache = tmp_path / "cache"
    assert run_cli(unet, "-o", tmp_path / "a", *FAST, "--cache-dir", cache)[0] == 0
    (exported,) = cache.glob("export-*/model.onnx")
    exported.write_bytes(exported.read_bytes()[:100])  # truncated, as by a full disk
    code, _, err = run_cli(unet, "-o", tmp_path / "b", *FAST, "--cache-dir", cache)
    assert code == 0, err
    assert "damaged" in err


def test_check_on_a_model_without_its_data_file(unet_onnx, tmp_path):
    path = _with_external_data(unet_onnx, tmp_path / "q.onnx")
    os.remove(tmp_path / "q.onnx.data")
    _one_line_error(*run_cli("check", path)[::2], "q.onnx.data")


def test_output_folder_honours_the_umask_and_stale_temporaries_are_swept(unet_onnx, tmp_path):
    stale = tmp_path / ".o.tmp-999999-abcd"  # a run killed with SIGKILL (no such pid)
    stale.mkdir()
    (stale / "model.mpq.onnx").write_text("half")
    old = os.umask(0o022)
    try:
        assert run_cli(unet_onnx, "-o", tmp_path / "o", *FAST)[0] == 0
    finally:
        os.umask(old)
    assert (os.stat(tmp_path / "o").st_mode & 0o777) == 0o755
    assert not stale.exists()


def test_output_shape_unlike_the_sample_is_named(tmp_path):
    path = _one_conv_model(tmp_path / "two_channels.onnx", out_channels=2)
    _one_line_error(*run_cli(path, "-o", tmp_path / "o", *FAST[:-1], "8")[::2], "of the sample's shape", "--sample-name")


def test_timestep_name_naming_the_wrong_input(cond_unet_onnx, tmp_path):
    code, _, err = run_cli(cond_unet_onnx, "-o", tmp_path / "o", *FAST, "--timestep-name", "encoder_hidden_states")
    # held to the timestep's rule when inspected, not found out by onnxruntime during calibration
    _one_line_error(code, err, "--timestep-name 'encoder_hidden_states' is a rank-3", "scalar or [batch]")
    assert not (tmp_path / "o").exists() and "[calibrate]" not in err


def test_samples_beyond_memory_fail_before_sampling(unet_onnx, tmp_path):
    code, _, err = run_cli(unet_onnx, "-o", tmp_path / "o", *FAST, "--samples", "2000000")
    _one_line_error(code, err, "--samples 2000000 needs")
    assert "[calibrate] started" not in err


def test_a_full_disk_while_caching_is_a_warning_and_leaves_no_temporary(unet_onnx, tmp_path, monkeypatch):
    import errno

    import mpq_export.stages.calibrate as calibrate_mod

    real = np.savez

    cache = tmp_path / "cache"

    def full(path, *a, **k):
        if not str(path).startswith(str(cache)):  # only the cache's disk is full
            return real(path, *a, **k)
        with open(path, "wb") as f:  # a partial file, then the disk is full
            f.write(b"PK")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(calibrate_mod.np, "savez", full)
    code, _, err = run_cli(unet_onnx, "-o", tmp_path / "o", *FAST, "--cache-dir", cache)
    monkeypatch.setattr(calibrate_mod.np, "savez", real)
    assert code == 0, err
    assert "could not write the calibration cache" in err
    assert not list(cache.glob("*tmp*")) and not list(cache.glob("calib-*"))


def test_diffusers_config_that_is_not_json(tmp_path):
    unet = tmp_path / "unet"
    unet.mkdir()
    (unet / "config.json").write_text("{not json")
    _one_line_error(*run_cli(unet, "-o", tmp_path / "o", *FAST)[::2], "config.json is not readable JSON")


def test_truncated_external_data(unet_onnx, tmp_path):
    path = _with_external_data(unet_onnx, tmp_path / "ext.onnx")
    data = tmp_path / "ext.onnx.data"
    data.write_bytes(data.read_bytes()[:1000])
    _one_line_error(*run_cli(path, "-o", tmp_path / "o", *FAST)[::2], "truncated")


def test_sigterm_unwinds_like_ctrl_c(unet_onnx, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "o"
    p = subprocess.Popen([sys.executable, "-m", "mpq_export.cli", unet_onnx, "-o", str(out),  
                          "--steps", "400", "--timesteps", "2", "--samples", "4", "--val-samples", "2",
                          "--target", "onnxruntime", "--no-stability", "--no-act-costs", "--budget", "6",
                          "--cache-dir", str(tmp_path / "cache")],
                         stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    seen = ""
    while time.time() < deadline:  # wait until calibration runs, then terminate
        line = p.stderr.readline()
        seen += line
        if "[calibrate] started" in line:
            break
    p.send_signal(signal.SIGTERM)
    _, rest = p.communicate(timeout=60)
    assert p.returncode == 130, seen + rest
    assert "no output was published" in rest and "Traceback" not in rest
    assert not out.exists() and not [x for x in tmp_path.iterdir() if x.name.startswith(".o.")]


def test_scratch_of_a_killed_run_is_swept(unet_onnx, tmp_path, monkeypatch):
    import tempfile

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    dead = scratch / "mpq-export-fp16-999999-abcd"  # no such process
    dead.mkdir()
    (dead / "model.fp16.onnx").write_text("x")
    mine = scratch / "someone-elses-folder"
    mine.mkdir()
    assert run_cli(unet_onnx, "-o", tmp_path / "o", *FAST)[0] == 0
    assert not dead.exists() and mine.exists()


def test_two_concurrent_runs_into_one_folder_leave_one_complete_output(unet_onnx, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "mpq_export.cli", unet_onnx, "-o", str(out), *FAST, "--cache-dir", str(tmp_path / "c")]
    procs = [subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    rep = json.loads((out / "report.json").read_text())
    assert rep["tool"] == "mpq-export" and (out / "model.mpq.onnx").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "o"]  # no temporaries or .old folders left


def test_an_already_quantized_model_is_refused(unet_onnx, tmp_path):
    assert run_cli(unet_onnx, "-o", tmp_path / "first", *FAST)[0] == 0
    code, _, err = run_cli(tmp_path / "first" / "model.mpq.onnx", "-o", tmp_path / "again", *FAST)
    _one_line_error(code, err, "already quantized", "FP32 model")
    assert not (tmp_path / "again").exists()


@pytest.mark.parametrize("case, needles", [
    ("uncond_nan", ["uncond_encoder_hidden_states", "NaN"]),
    ("uncond_strings", ["uncond_encoder_hidden_states", "numeric"]),
    ("uncond_complex", ["uncond_encoder_hidden_states", "complex"]),
    ("cond_complex", ["'encoder_hidden_states'", "complex"]),
])
def test_unconditional_arrays_are_checked_as_the_conditional_ones(cond_unet_onnx, tmp_path, case, needles):
    cond = np.random.default_rng(0).standard_normal((2, 8, 16)).astype(np.float32)
    uncond = {"uncond_nan": np.full((1, 8, 16), np.nan, np.float32), "uncond_strings": np.array([["a"] * 16] * 8)[None],
              "uncond_complex": cond[:1] + 1j, "cond_complex": cond[:1]}[case]
    f = tmp_path / "c.npz"
    np.savez(f, encoder_hidden_states=cond + 1j if case == "cond_complex" else cond, uncond_encoder_hidden_states=uncond)
    _one_line_error(*run_cli(cond_unet_onnx, "-o", tmp_path / "o", *FAST, "--calib-data", f,
                             "--guidance-scale", "3")[::2], *needles)
    assert not (tmp_path / "o").exists()


def test_options_the_input_cannot_honour_are_refused(pipeline_dir, cond_unet_onnx, flux_folder, tmp_path):
    """--seq-len where encoded prompts or --calib-data set the length; --guidance-scale on a model whose
    guidance is an input: refused naming the user's option, not a file of ours, before any export."""
    f = tmp_path / "c.npz"
    np.savez(f, encoder_hidden_states=np.zeros((2, 8, 16), np.float32))
    code, _, err = run_cli(pipeline_dir, "-o", tmp_path / "a", *FAST, "--seq-len", "12")
    _one_line_error(code, err, "--seq-len 12", "encoded at its text encoders' own length")
    assert "[export]" not in err
    _one_line_error(*run_cli(cond_unet_onnx, "-o", tmp_path / "b", *FAST, "--calib-data", f, "--seq-len", "8")[::2],
                    "--seq-len 8", "--calib-data")
    code, _, err = run_cli(os.path.join(flux_folder, "transformer"), "-o", tmp_path / "c", *FAST, "--guidance-scale", "3")
    _one_line_error(code, err, "--guidance-scale 3", "guidance as an input", "drop --guidance-scale")
    assert "[export]" not in err and "prompts-" not in err.splitlines()[-1]
    assert not any((tmp_path / d).exists() for d in "abc")


def test_weights_and_activations_fp16_cannot_hold_are_refused_on_tensorrt(tmp_path):
    """The tensorrt target's graph is FP16: a conv output past 65504 (weights 1e6) and a float constant past it
    (an Add of 1e5 after the conv) are refused naming what and the fix, nothing published."""
    from onnx import helper

    tensorrt = [a if a != "onnxruntime" else "tensorrt" for a in FAST] + ["--budget", "8"]
    for case, needles in (("activation", ("activation(s) exceed FP16's range",)),
                          ("constant", ("float weight(s) exceed FP16's range", "big_bias"))):
        m = onnx.load(_one_conv_model(tmp_path / f"{case}.onnx"))
        if case == "activation":
            m.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.full((1, 1, 1, 1), 1e6, np.float32), "w"))
        else:  # two convs (ORM wants two layers), then the constant
            m.graph.node[0].output[0] = "conv_out"
            m.graph.initializer.extend([numpy_helper.from_array(np.full((1, 1, 3, 3), 0.1, np.float32), "w2"),
                                        numpy_helper.from_array(np.full((1,), 1e5, np.float32), "big_bias")])
            m.graph.node.extend([helper.make_node("Conv", ["conv_out", "w2"], ["conv2_out"], pads=[1, 1, 1, 1]),
                                 helper.make_node("Add", ["conv2_out", "big_bias"], ["y"])])
        onnx.save(m, str(tmp_path / f"{case}.onnx"))
        _one_line_error(*run_cli(tmp_path / f"{case}.onnx", "-o", tmp_path / f"o-{case}", *tensorrt)[::2],
                        *needles, "--target onnxruntime")
        assert not (tmp_path / f"o-{case}").exists()


def test_a_model_whose_validation_is_not_finite_is_never_published(unet_onnx, tmp_path, monkeypatch):
    import mpq_export.stages.validate as validate_mod

    real = validate_mod.Validator.validate

    def broken(self, path, label="validate"):
        v = real(self, path, label)
        if label == "validate":
            v.sample_psnr_db = float("nan")
        return v

    monkeypatch.setattr(validate_mod.Validator, "validate", broken)
    _one_line_error(*run_cli(unet_onnx, "-o", tmp_path / "o", *FAST)[::2], "not finite", "nothing was published")
    assert not (tmp_path / "o").exists()


def test_a_refused_run_leaves_no_folder_it_made_and_a_link_is_written_through(unet_onnx, tmp_path, monkeypatch):
    deep = tmp_path / "new" / "deeper" / "out"
    _one_line_error(*run_cli(unet_onnx, "-o", deep, *FAST, "--budget", "3")[::2], "outside")
    assert not (tmp_path / "new").exists()

    import mpq_export.stages.validate as validate_mod

    def interrupted(*a, **k):  # a failure after the staging folder exists
        raise KeyboardInterrupt

    monkeypatch.setattr(validate_mod.Validator, "validate", interrupted)
    code, _, _ = run_cli(unet_onnx, "-o", deep, *FAST)
    assert code == 130 and not (tmp_path / "new").exists()
    monkeypatch.undo()

    real = tmp_path / "real.mpq"
    code, _, err = run_cli(unet_onnx, "-o", real, *FAST)
    assert code == 0, err
    link = tmp_path / "link.mpq"
    link.symlink_to(real)
    code, _, err = run_cli(unet_onnx, "-o", link, *FAST, "--budget", "7")
    assert code == 0, err
    assert link.is_symlink() and os.path.samefile(link, real)
    assert json.loads((real / "report.json").read_text())["budget"] == 7
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("link")) == ["link.mpq"]
