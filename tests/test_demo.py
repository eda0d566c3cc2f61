"""The README's main job: the whole pipeline on the bundled trained model."""

import json

import pytest
from conftest import run_cli

pytestmark = pytest.mark.slow


def test_demo_end_to_end(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "demo"
    code, stdout, err = run_cli("--demo", "-o", out, "--samples", "16")  # the README's command
    assert code == 0, err
    rep = json.loads((out / "report.json").read_text())
    assert rep["budget"] == 7.5 and rep["achieved_bits"] <= 7.5
    assert rep["counted_bits"] == pytest.approx(rep["achieved_bits"])
    assert rep["target"] == "tensorrt" and rep["check"].startswith("passed")
    # the trained model at the tensorrt target's 7.5 bits stays close to FP32
    assert rep["validation"]["mean_sqnr_db"] > 20
    assert rep["validation"]["sample_psnr_db"] > 25
    assert (out / "samples.png").stat().st_size > 5000
    assert "samples.png" in stdout
    assert "scheduler_config.json" in rep["calibration"]["schedule"]
