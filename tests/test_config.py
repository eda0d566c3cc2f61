"""config: the configuration holds together what the stages need before any work starts."""

import pytest

from mpq_export.util.errors import MPQError
from mpq_export.pipeline import PipelineConfig
from mpq_export.formats import QuantizeSettings
from mpq_export.targets import all_targets, get_target


def test_gptq_rounding_is_what_asks_calibration_for_input_statistics():
    assert PipelineConfig(model="m.onnx").gptq  # the default rounding
    assert not PipelineConfig(model="m.onnx", quantize=QuantizeSettings(rounding="nearest")).gptq


def test_one_target_for_the_whole_run_and_a_reachable_default_budget():
    cfg = PipelineConfig(model="m.onnx", target="onnxruntime")
    assert cfg.target is get_target("onnxruntime")
    assert PipelineConfig(model="m.onnx").target.name == "tensorrt" and PipelineConfig(model="m.onnx").budgets == (8.0,)
    # 8 bits is reachable on every target: each op type has an 8-bit format there
    for t in all_targets():
        assert all(any(f.weight_bits == 8 for f in fmts) for fmts in t.formats.values())


# Every "would be ignored" / "cannot be built" refusal docs/cli.md lists, raised by the library: the same
# bad combination through PipelineConfig (Python) and through the CLI gives the same one line.
REFUSALS = [
    (dict(allocation=dict(method="mpq", seed=3)), ["--seed", "3"], "--seed is the seed of --allocation random"),
    (dict(act_calib=dict(method="mse", percentile=99.9)), ["--act-calib", "mse", "--act-percentile", "99.9"],
     "--act-percentile is used only with --act-calib percentile"),
    (dict(target="tensorrt", quantize=dict(integer_conv=False)), ["--float-conv-outputs"],
     "--float-conv-outputs changes the onnxruntime target's graph"),
    (dict(target="tensorrt", quantize=dict(block_size=32)), ["--block-size", "32"], "--block-size 32 cannot be built"),
    (dict(target="tensorrt", quantize=dict(reduce_range=True)), ["--reduce-range", "yes"],
     "--reduce-range works around onnxruntime's x86 integer GEMM"),
    (dict(importance="sensitivity", allocation=dict(method="uniform")),
     ["--importance", "sensitivity", "--allocation", "uniform"], "--importance sensitivity scores layers for"),
    (dict(target="onnxruntime", build_engine="yes"), ["--target", "onnxruntime", "--build-engine", "yes"],
     "--build-engine yes builds TensorRT engines"),
    (dict(target="onnxruntime", gpu="hopper"), ["--target", "onnxruntime", "--gpu", "hopper"],
     "--gpu hopper chooses the formats of a TensorRT engine's GPU"),
    (dict(gpu="ampere", allocation=dict(formats=("fp16", "fp8"))), ["--gpu", "ampere", "--formats", "fp16,fp8"],
     "--formats fp8: not stored by the tensorrt target"),
    (dict(gpu="ampere", quantize=dict(fp8_attention=True)), ["--gpu", "ampere", "--fp8-attention"],
     "--fp8-attention needs a target and GPU that run FP8"),
    (dict(budgets=(8.0, 8.0)), ["--budget", "8,8"], "--budget lists 8 twice"),
    (dict(out_dir=" "), ["-o", " "], "-o is empty"),
]


@pytest.mark.parametrize("kwargs, argv, needle", REFUSALS)
def test_refusals_come_from_the_library_for_python_and_cli_alike(kwargs, argv, needle, tmp_path):
    from conftest import run_cli

    from mpq_export.stages.act_ranges import ActCalibSettings
    from mpq_export.stages.allocate import AllocationSettings

    classes = {"allocation": AllocationSettings, "act_calib": ActCalibSettings, "quantize": QuantizeSettings}
    with pytest.raises(MPQError, match=needle):
        built = {k: classes[k](**v) if k in classes else v for k, v in kwargs.items()}
        PipelineConfig(model="m.onnx", **built)
    model = tmp_path / "m.onnx"
    model.write_bytes(b"not read: the refusal comes first")
    code, out, err = run_cli(model, "--budget", "8", *argv) if "--budget" not in argv else run_cli(model, *argv)
    assert code == 1 and needle in err and err.count("\n") == 1 and not out, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # nothing written


@pytest.mark.parametrize("kwargs, needle", [({"importance": "hessian"}, "--importance must be one of"),
                                            ({"build_engine": "maybe"}, "--build-engine must be one of"),
                                            ({"budgets": ()}, "give at least one --budget"),
                                            ({"budgets": "8,eight"}, "--budget must be a finite number, got 'eight'"),
                                            ({"budgets": (8.0, float("nan"))}, "--budget must be a finite number"),
                                            ({"model": None}, "the model must be a path"),
                                            ({"out_dir": ""}, "-o is empty"), ({"out_dir": 3}, "-o must be a path")])
def test_bad_settings_are_one_line_errors(kwargs, needle):
    with pytest.raises(MPQError, match=needle):
        PipelineConfig(**{"model": "m.onnx", **kwargs})


def test_paths_and_bare_budgets_from_python_are_taken_as_the_cli_takes_them():
    from pathlib import Path

    import numpy as np

    cfg = PipelineConfig(model=Path("m.onnx"), out_dir=Path("out"), budgets=np.float64(7.5))
    assert cfg.model == "m.onnx" and cfg.out_dir == "out" and cfg.budgets == (7.5,)
    assert isinstance(cfg.budgets[0], float)
