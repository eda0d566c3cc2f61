"""The whole CLI on small random-weight UNets, and its answers to bad input."""

import json
import os
import subprocess
import sys

import onnx
import numpy as np
import pytest
from conftest import run_cli
from onnx import TensorProto, helper

from mpq_export.stages.inspect import inspect_model
from mpq_export.stages.quantize import count_weight_bits

FAST = ["--steps", "6", "--timesteps", "3", "--samples", "4", "--val-samples", "2", "--target", "onnxruntime"]


def _weight_sqnr(rep) -> float:
    """Parameter-weighted mean SQNR of the stored weights against the float ones (float layers: none)."""
    rows = [l for l in rep["layers"] if l.get("weight_sqnr_db") is not None]
    return sum(l["params"] * l["weight_sqnr_db"] for l in rows) / sum(l["params"] for l in rows)


def test_budget_sweep_quality_rises_and_the_budget_holds(unet_onnx, tmp_path):
    sqnr = []
    for budget in (4.5, 5, 6, 8):
        out = tmp_path / f"b{budget}"
        code, stdout, err = run_cli(unet_onnx, "--budget", budget, "-o", out, *FAST, "--no-stability")
        assert code == 0, err
        rep = json.loads((out / "report.json").read_text())
        assert rep["achieved_bits"] <= budget + 1e-12
        counted, _ = count_weight_bits(str(out / "model.mpq.onnx"), inspect_model(unet_onnx))
        assert counted == pytest.approx(rep["achieved_bits"], abs=1e-12) == pytest.approx(rep["counted_bits"])
        assert {"model", "budget", "achieved_bits", "target", "layers", "importance_per_timestep", "validation",
                "timings"} <= set(rep)
        assert rep["model"] == os.path.abspath(unet_onnx)
        assert set(rep["peak_rss_mb"]) == set(rep["timings"]) and min(rep["peak_rss_mb"].values()) > 10
        md = (out / "report.md").read_text()
        assert "## Activation quantizers that cost the most" in md and "peak RSS" in md
        costs = rep["calibration"]["activation_ranges"]["costliest"]
        assert costs and costs == sorted(costs, key=lambda c: c["sqnr_db"])  # worst first
        assert any(c["quantized_here"] for c in costs) and not any(  # conv_in's input is FP16-pinned
            c["quantized_here"] for c in costs if c["layers"] == ["conv_in"])
        assert {"name", "op_type", "params", "format", "weight_bits", "importance"} <= set(rep["layers"][0])
        alloc = json.loads((out / "allocation.json").read_text())
        assert set(alloc["layers"]) == {l["name"] for l in rep["layers"]}
        for f in ("model.mpq.onnx", "report.md", "bits.png", "validation.png", "samples.png", "polygraphy_data.py"):
            assert (out / f).exists(), f
        # the stored weights' error shrinks with the budget. (End-to-end SQNR of this random-weight model is
        # not monotone: each budget step moves MatMuls from weight-only INT4 to W8A8, whose INT8 inputs
        # cost it more than their weights gain.)
        sqnr.append(_weight_sqnr(rep))
        assert str(out) in stdout
    assert sqnr == sorted(sqnr) and sqnr[-1] > sqnr[0] + 3, sqnr


def test_conditional_unet_end_to_end_and_baselines(cond_unet_onnx, tmp_path):
    weight_sqnr = {}
    for extra in ([], ["--allocation", "uniform"], ["--allocation", "random", "--seed", "3"],
                  ["--importance", "orm", "--orm-estimator", "biased", "--agg", "exp-of-mean"]):
        out = tmp_path / ("o" + "_".join(extra))
        # the baselines skip the report's extras: the activation costs are the first run's, the stability
        # study (how ORM's K, alpha and beta move layers) the ORM run's
        lean = () if not extra or "orm" in extra else ("--no-stability", "--no-act-costs")
        code, _, err = run_cli(cond_unet_onnx, "--budget", "6", "-o", out, *FAST, *extra, *lean)
        assert code == 0, err
        rep = json.loads((out / "report.json").read_text())
        assert "standard-normal" in rep["calibration"]["conditioning"]
        assert rep["achieved_bits"] <= 6 + 1e-9 and rep["counted_bits"] == pytest.approx(rep["achieved_bits"], abs=1e-9)
        assert rep["validation"]["mean_cosine"] > 0.9
        weight_sqnr[" ".join(extra) or "mpq"] = _weight_sqnr(rep)
    # uniform puts every unpinned layer at 4 bits; the 6-bit allocation spends the budget it has
    assert weight_sqnr["mpq"] > weight_sqnr["--allocation uniform"] + 1
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    assert rep["stability"] is None  # the default scorer has no K, alpha or beta to vary
    # --importance auto: at 6 steps x 4 samples, a probe per layer at each of 3 profiled steps would cost more
    # than twice calibration's forwards: orm-error, and the report says why
    assert rep["importance_method"] == "orm-error"
    assert any(n.startswith("--importance auto: orm-error") for n in rep["notes"]), rep["notes"]
    rep = json.loads((tmp_path / "o--importance_orm_--orm-estimator_biased_--agg_exp-of-mean" / "report.json").read_text())
    assert rep["stability"] and all(isinstance(c["layers_changed"], int) and c["change"] for c in rep["stability"])
    assert "standard-normal" in (tmp_path / "o" / "report.md").read_text()
    example = os.path.join(os.path.dirname(__file__), "..", "calib_data", "example_cond_unet.npz")
    code, _, err = run_cli(cond_unet_onnx, "--budget", "6", "-o", tmp_path / "withdata", *FAST, "--calib-data", example)
    assert code == 0, err
    rep = json.loads((tmp_path / "withdata" / "report.json").read_text())
    assert rep["calibration"]["conditioning"].startswith("file") and "example_cond_unet.npz" in rep["calibration"]["conditioning"]


def test_second_budget_reuses_the_calibration(unet_onnx, tmp_path):
    cache = tmp_path / "cache"
    for b in (5, 6):
        code, _, err = run_cli(unet_onnx, "--budget", b, "-o", tmp_path / f"o{b}", "--cache-dir", cache, *FAST, "--no-stability")
        assert code == 0, err
    assert json.loads((tmp_path / "o6" / "report.json").read_text())["calibration"]["cached"] is True
    assert len(list(cache.glob("calib-*.npz"))) == 1


def _one_line_error(code, err, *needles):
    assert code != 0
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("mpq-export: error:"), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[-1], (n, lines[-1])


def test_bad_input_gets_one_line_errors(unet_onnx, tmp_path):
    code, _, err = run_cli(tmp_path / "missing.onnx", "--budget", "8")
    _one_line_error(code, err, "not found")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00garbage")
    _one_line_error(*run_cli(junk, "--budget", "8")[::2], "not a readable ONNX")
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])
    w = helper.make_tensor("w", TensorProto.FLOAT, [3, 3, 1, 1], [0.0] * 9)
    g = helper.make_graph([helper.make_node("Conv", ["image", "w"], ["y"])], "g", [x], [y], [w])
    no_t = tmp_path / "no_t.onnx"
    onnx.save(helper.make_model(g), str(no_t))
    _one_line_error(*run_cli(no_t, "--budget", "8")[::2], "timestep")
    g2 = helper.make_graph([helper.make_node("Relu", ["sample"], ["y"])], "g",
                           [helper.make_tensor_value_info("sample", TensorProto.FLOAT, [1, 3, 8, 8]),
                            helper.make_tensor_value_info("timestep", TensorProto.FLOAT, [1])], [y])
    no_layers = tmp_path / "nolayers.onnx"
    onnx.save(helper.make_model(g2), str(no_layers))
    _one_line_error(*run_cli(no_layers, "--budget", "8")[::2], "no quantizable layers")
    _one_line_error(*run_cli(unet_onnx, "--budget", "3", "-o", tmp_path / "x")[::2], "outside", "average weight bits")
    assert not (tmp_path / "x").exists()
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):  # root ignores permission bits: use a path under a file instead
            blocker = tmp_path / "file"
            blocker.write_text("x")
            target = blocker / "out"
        else:
            target = ro / "out"
        _one_line_error(*run_cli(unet_onnx, "--budget", "8", "-o", target, *FAST)[::2], "output")
    finally:
        ro.chmod(0o700)
    _one_line_error(*run_cli(unet_onnx, "--budget", "abc", "-o", tmp_path / "abc")[::2], "--budget must be a finite number")
    _one_line_error(*run_cli(unet_onnx, "--budget", "7,x", "-o", tmp_path / "abc")[::2], "got 'x'")
    from mpq_export.cli import build_parser, config_from_args

    args = build_parser().parse_args([str(unet_onnx)])  # no --budget: the library's default, as from Python
    assert config_from_args(args, args.model).budgets == (8.0,)
    _one_line_error(*run_cli(unet_onnx, "--budget", "nan", "-o", tmp_path / "nan")[::2], "finite")
    _one_line_error(*run_cli(unet_onnx, "--budget", "5", "--target", "tensorrt", "-o", tmp_path / "t")[::2],
                    "no INT4 convolution", "--target onnxruntime")
    assert not (tmp_path / "t").exists()


def test_nan_from_the_model_is_a_clean_error(tmp_path):
    """A model whose output is NaN (log of a negative number) fails calibration with one line."""
    x = helper.make_tensor_value_info("sample", TensorProto.FLOAT, ["b", 1, 4, 4])
    t = helper.make_tensor_value_info("timestep", TensorProto.FLOAT, ["b"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 1, 4, 4])
    w = helper.make_tensor("w", TensorProto.FLOAT, [1, 1, 1, 1], [-1.0])
    nodes = [helper.make_node("Conv", ["sample", "w"], ["c"]), helper.make_node("Abs", ["c"], ["a"]),
             helper.make_node("Neg", ["a"], ["n"]), helper.make_node("Log", ["n"], ["y"])]
    m = helper.make_model(helper.make_graph(nodes, "g", [x, t], [y], [w]), opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "nan.onnx"
    onnx.save(m, str(path))
    code, _, err = run_cli(path, "--budget", "8", "-o", tmp_path / "o", *FAST)
    _one_line_error(code, err, "NaN/Inf")
    assert not (tmp_path / "o").exists()


def test_a_failed_run_leaves_no_output_that_looks_complete(unet_onnx, tmp_path, monkeypatch):
    import mpq_export.stages.validate as validate_mod

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(validate_mod.Validator, "validate", boom)  # after quantize wrote into the output
    out = tmp_path / "out"
    code, _, err = run_cli(unet_onnx, "--budget", "8", "-o", out, *FAST)
    assert code == 130 and "no output was published" in err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # temp folder removed


def test_help_imports_no_heavy_module():
    """--help is instant because building the parser imports none of torch, onnx, onnxruntime, tensorrt
    or diffusers (what it costs is not timed here: these machines are shared and noisy)."""
    heavy = ("torch", "onnx", "onnxruntime", "tensorrt", "diffusers", "onnx_graphsurgeon", "highspy")
    code = ("import sys; from mpq_export.cli import build_parser; build_parser().format_help(); "
            f"loaded = [m for m in {heavy!r} if m in sys.modules]; assert not loaded, loaded")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    p = subprocess.run([sys.executable, "-m", "mpq_export.cli", "--help"], capture_output=True, text=True)
    assert p.returncode == 0 and "--budget" in p.stdout


def test_version_is_the_installed_distributions(capsys):
    """--version prints the one version string, the one the installed distribution carries too."""
    import importlib.metadata

    from mpq_export import __version__
    from mpq_export.cli import main

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"mpq-export {__version__}"
    assert importlib.metadata.version("mpq-export") == __version__


@pytest.mark.parametrize("importance", ["sensitivity", "trajectory"])
def test_sensitivity_scorer_through_the_cli(unet_onnx, tmp_path, importance):
    out = tmp_path / "sens"
    code, _, err = run_cli(unet_onnx, "--budget", "5", "-o", out, *FAST, "--importance", importance, "--no-stability")
    assert code == 0, err
    rep = json.loads((out / "report.json").read_text())
    assert rep["allocation"]["scorer"] == importance and rep["achieved_bits"] <= 5
    eight = [l for l in rep["layers"] if l["format"] == "w8a8" and l["pin"] is None]
    four = [l for l in rep["layers"] if l["format"] in ("w4a8", "w4a16")]
    # the program bought 8 bits where the measured gain per parameter was largest
    gain = lambda l: (max(v for k, v in l["sensitivity"].items() if k.startswith("w4")) - l["sensitivity"]["w8a8"]) / l["params"]
    assert eight and four and np.median([gain(l) for l in eight]) > np.median([gain(l) for l in four])


def test_activation_cost_table_is_skipped_when_it_would_take_too_long(unet_onnx, tmp_path):
    from mpq_export.stages.calibrate import CalibrationSettings
    from mpq_export.pipeline import PipelineConfig, run_pipeline
    from mpq_export.stages.validate import ValidationSettings

    res = run_pipeline(PipelineConfig(model=unet_onnx, budgets=(6.0,), out_dir=str(tmp_path / "o"), stability=False,
                                      calibration=CalibrationSettings(steps=4, timesteps=2, samples=4),
                                      validation=ValidationSettings(samples=2),
                                      target="onnxruntime", act_costs_limit_s=0.0))
    rep = res.results[0].report  # the typed Report; report.json is its to_json()
    assert rep.calibration.activation_ranges.costliest is None
    assert any("activation-cost table was skipped" in n for n in rep.notes)
    on_disk = json.loads((tmp_path / "o" / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(rep.to_json())) and on_disk["tool"] == "mpq-export"
    assert on_disk["layers"][0]["name"] == rep.layers[0].name and rep.plots
    from mpq_export.report.records import Report

    assert Report.from_json(on_disk) == rep  # report.json reads back as the same typed Report


def test_device_cuda_without_onnxruntime_gpu_is_one_line(tmp_path):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed: --device cuda is available here")
    code, _, err = run_cli("--demo", "--device", "cuda", "-o", tmp_path / "o")
    assert code == 1 and err.strip().splitlines()[-1].startswith("mpq-export: error: --device cuda needs onnxruntime-gpu")
    assert "Traceback" not in err and not (tmp_path / "o").exists()
