"""The scripts under tools/ that other figures depend on."""

import json
import os
import subprocess
import sys

import pytest
from conftest import run_cli

TOOLS = os.path.join(os.path.dirname(__file__), "..", "tools")


def test_make_unet_writes_a_folder_the_cli_quantizes(tmp_path):
    pytest.importorskip("torch")
    p = subprocess.run([sys.executable, os.path.join(TOOLS, "make_unet.py"), "tiny", str(tmp_path / "m")],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "m" / "unet" / "config.json").exists()
    code, _, err = run_cli(tmp_path / "m" / "unet", "--budget", "8", "-o", tmp_path / "o", "--steps", "4",
                           "--timesteps", "2", "--samples", "4", "--val-samples", "2", "--no-stability",
                           "--no-act-costs", "--seq-len", "8")
    assert code == 0, err
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    assert "scheduler_config.json" in rep["calibration"]["schedule"]  # found in the folder's scheduler/


def test_compare_peers_counts_bits_of_any_qdq_file(unet_onnx, tmp_path):
    """Its bit counter follows weight Q/DQ (ModelOpt's form) as well as stored integers (ours)."""
    sys.path.insert(0, TOOLS)
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    import compare_peers
    from mpq_export.stages.inspect import inspect_model

    info = inspect_model(unet_onnx)
    m = onnx.load(unet_onnx)
    layer = info.layers[3]
    node = next(n for n in m.graph.node if n.name == layer.node_name)
    w = layer.weight_name
    m.graph.initializer.extend([numpy_helper.from_array(np.array(0.01, np.float32), "s"),
                                numpy_helper.from_array(np.array(0, np.int8), "z")])
    m.graph.node.extend([helper.make_node("QuantizeLinear", [w, "s", "z"], ["wq"]),
                         helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["wdq"])])
    node.input[1] = "wdq"
    path = tmp_path / "qdq.onnx"
    onnx.save(m, str(path))
    total = sum(l.params for l in info.layers)
    want = (16 * (total - layer.params) + 8 * layer.params) / total
    assert compare_peers.count_bits(str(path), info) == pytest.approx(want)
    assert compare_peers.count_bits(unet_onnx, info) == 16  # the FP32 model: every weight float


def test_bench_attention_runs_the_products_on_integer_kernels():
    """docs/speed.md rests on onnxruntime taking the Q/DQ attention products as integer MatMuls."""
    p = subprocess.run([sys.executable, os.path.join(TOOLS, "bench_attention.py"), "--batch", "1", "--heads", "2",
                        "--tokens", "64", "--context", "32", "--head-dim", "8", "--rounds", "2"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    ratio_line, kernels_line = p.stdout.strip().splitlines()
    assert "Q/DQ / FP32 = " in ratio_line
    assert kernels_line.count("MatMulIntegerToFloat") == 2 and "MatMul " not in kernels_line + " "


@pytest.mark.parametrize("extra, gptq", [([], True), (["--no-gptq-statistics"], False)])
def test_bench_calibration_prints_the_ratio_and_where_time_went(unet_onnx, extra, gptq):
    """docs/performance.md.s calibration-cost figures come from this script: a ratio of two timed runs and the split."""
    p = subprocess.run([sys.executable, os.path.join(TOOLS, "bench_calibration.py"), "--model", unet_onnx,
                        "--samples", "4", "--steps", "4", "--timesteps", "2", "--repeats", "1", "--no-sketch-study",
                        *extra], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    ratio = [l for l in p.stdout.splitlines() if "time(calibrate) / time(bare) = " in l]
    assert len(ratio) == 1 and float(ratio[0].split("= ")[1].split()[0]) > 0
    assert ("gptq_statistics" in p.stdout) == gptq


def test_ort_kernel_check_compares_the_two_session_forms_on_the_saved_inputs(unet_onnx, tmp_path):
    """The default form is the session validation uses (its mean is the report's validation SQNR); the basic
    form computes the same Q/DQ as specified, so on an FP16 tensorrt-target graph it stays within ~1 dB."""
    import json
    import re
    import subprocess
    import sys

    from conftest import run_cli

    out = tmp_path / "o"
    code, _, err = run_cli(unet_onnx, "--budget", "8", "-o", out, "--steps", "6", "--timesteps", "2", "--samples", "4",
                           "--val-samples", "2", "--no-stability", "--no-act-costs")
    assert code == 0, err
    p = subprocess.run([sys.executable, os.path.join(TOOLS, "ort_kernel_check.py"), str(out)], capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    default, basic = [float(v) for v in re.findall(r"mean SQNR\s+(-?[\d.]+) dB", p.stdout)]
    assert abs(default - basic) < 1.5
    assert default == pytest.approx(json.loads((out / "report.json").read_text())["validation"]["mean_sqnr_db"], abs=0.01)
