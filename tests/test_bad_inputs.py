"""Hostile but fair inputs: each gets one error line (or works), no traceback, and nothing of the
user's is lost or reused stale."""

import json
import os

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


def test_budget_list_never_mixes_into_a_single_budget_output(unet_onnx, tmp_path):
    out = tmp_path / "o"
    assert run_cli(unet_onnx, "-o", out, *FAST)[0] == 0
    before = _tree(out)
    _one_line_error(*run_cli(unet_onnx, "-o", out, *FAST[:-1], "6,7")[::2], "single-budget")
    assert _tree(out) == before


@pytest.mark.parametrize("args,needles", [
    (["-o", "."], ["working directory"]),
    (["-o", ""], ["-o is empty"]),
    (["--calib-data", "missing.npz"], ["--calib-data file not found"]),
    (["--budget", "nan"], ["finite"]),
    (["--act-calib", "percentile", "--act-percentile", "100"], ["--act-percentile"]),
    (["--target", "tensorrt", "--block-size", "32"], ["--block-size 32", "TensorRT"]),
])
def test_bad_options_are_one_line_errors(unet_onnx, tmp_path, monkeypatch, args, needles):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("x")
    _one_line_error(*run_cli(unet_onnx, *FAST, *args)[::2], *needles)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_missing_external_data_is_one_line(unet_onnx, tmp_path):
    m = onnx.load(unet_onnx)
    path = tmp_path / "ext.onnx"
    onnx.save(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="ext.onnx.data",
              size_threshold=0)
    os.remove(tmp_path / "ext.onnx.data")
    _one_line_error(*run_cli(path, "-o", tmp_path / "o", *FAST)[::2], "ext.onnx.data")
    assert not (tmp_path / "o").exists()


def test_empty_file_is_not_called_a_model(tmp_path):
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    _one_line_error(*run_cli(empty, "-o", tmp_path / "o", *FAST)[::2], "no graph")


def test_a_fine_tuned_model_with_identical_sizes_never_reuses_statistics(unet_onnx, tmp_path):
    """Same graph, same external-data file sizes, other weights: the calibration cache must miss."""
    from mpq_export.calibrate import CalibrationSettings, calibrate
    from mpq_export.layers import inspect_model
    from mpq_export.sampler import NoiseSchedule

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
