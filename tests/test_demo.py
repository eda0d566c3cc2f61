"""The README's main job: the whole pipeline on the bundled trained model."""

import json

import pytest
from conftest import run_cli

pytestmark = pytest.mark.slow


def test_demo_end_to_end(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "demo"
    code, stdout, err = run_cli("--demo", "--budget", "4.5", "-o", out, "--samples", "16")
    assert code == 0, err
    rep = json.loads((out / "report.json").read_text())
    assert rep["achieved_bits"] <= 4.5 and rep["target"] == "tensorrt" and rep["check"].startswith("passed")
    # a trained model quantized at 4.5 bits stays close to FP32 (measured 26-27 dB, 31-32 dB)
    assert rep["validation"]["mean_sqnr_db"] > 20
    assert rep["validation"]["sample_psnr_db"] > 25
    assert (out / "samples.png").stat().st_size > 5000
    assert "samples.png" in stdout
    assert "scheduler_config.json" in rep["calibration"]["schedule"]
