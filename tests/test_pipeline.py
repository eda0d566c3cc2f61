"""pipeline: the configuration holds together what the stages need before any work starts."""

import pytest

from mpq_export.calibrate import CalibrationSettings
from mpq_export.errors import MPQError
from mpq_export.pipeline import PipelineConfig
from mpq_export.quantize import QuantizeSettings


def test_gptq_rounding_turns_on_the_input_statistics_it_needs():
    cfg = PipelineConfig(model="m.onnx", calibration=CalibrationSettings(input_hessians=False))
    assert cfg.quantize.rounding == "gptq" and cfg.calibration.input_hessians
    cfg = PipelineConfig(model="m.onnx", quantize=QuantizeSettings(rounding="nearest"),
                         calibration=CalibrationSettings(input_hessians=False))
    assert not cfg.calibration.input_hessians
    # nearest rounding reads no input statistics, so calibration does not gather them
    assert not PipelineConfig(model="m.onnx", quantize=QuantizeSettings(rounding="nearest")).calibration.input_hessians


def test_the_allocator_picks_from_the_target_quantize_writes():
    cfg = PipelineConfig(model="m.onnx", quantize=QuantizeSettings(target="onnxruntime"))
    assert cfg.allocation.target == "onnxruntime"


@pytest.mark.parametrize("kwargs, needle", [({"importance": "hessian"}, "--importance must be one of"),
                                            ({"build_engine": "maybe"}, "--build-engine must be one of"),
                                            ({"budgets": ()}, "give at least one --budget"),
                                            ({"guidance_scale": 0.5}, "--guidance-scale must be a number >= 1"),
                                            ({"budgets": "8"}, "--budget must be a finite number, got '8'"),
                                            ({"budgets": (8.0, float("nan"))}, "--budget must be a finite number"),
                                            ({"model": None}, "the model must be a path"),
                                            ({"out_dir": ""}, "-o must be a path")])
def test_bad_settings_are_one_line_errors(kwargs, needle):
    with pytest.raises(MPQError, match=needle):
        PipelineConfig(**{"model": "m.onnx", **kwargs})


def test_paths_and_bare_budgets_from_python_are_taken_as_the_cli_takes_them():
    from pathlib import Path

    import numpy as np

    cfg = PipelineConfig(model=Path("m.onnx"), out_dir=Path("out"), budgets=np.float64(7.5))
    assert cfg.model == "m.onnx" and cfg.out_dir == "out" and cfg.budgets == (7.5,)
    assert isinstance(cfg.budgets[0], float)
