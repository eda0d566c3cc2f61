"""GPU tests (`pytest -m gpu`): TensorRT engines of the Q/DQ graph against onnxruntime.

They need TensorRT and an NVIDIA GPU and skip with the reason otherwise; the Docker image's `test`
stage runs them on NVIDIA's TensorRT base image.
"""

import json

import numpy as np
import pytest
from conftest import run_cli

from mpq_export.runtime.engine import tensorrt_status

pytestmark = pytest.mark.gpu

_ok, _why = tensorrt_status()
if not _ok:
    pytestmark = [pytest.mark.gpu, pytest.mark.skip(reason=_why)]

FAST = ["--steps", "10", "--timesteps", "4", "--samples", "8", "--val-samples", "4"]


@pytest.fixture(scope="module")
def engine_out(unet_onnx, tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu") / "out"
    code, _, err = run_cli(unet_onnx, "--budget", "7.7", "-o", out, *FAST, "--target", "tensorrt", "--build-engine", "yes")
    assert code == 0, err
    return out


def test_engine_is_built_with_integer_layers(engine_out):
    rep = json.loads((engine_out / "report.json").read_text())
    assert rep["engine"]["status"].startswith("built")
    assert (engine_out / "model.mpq.plan").exists()
    prec = rep["engine"]["layer_precisions"]
    assert prec.get("Int8", 0) > 0, prec  # TensorRT really runs the Q/DQ layers in INT8


def test_engine_matches_onnxruntime_through_polygraphy(engine_out):
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.backend.trt import EngineFromPath, TrtRunner
    from polygraphy.comparator import Comparator
    from polygraphy.comparator.compare import CosineSimilarityCompareFunc, SnrCompareFunc

    z = np.load(engine_out / "validation_inputs.npz")
    feeds = [{"sample": x.astype(np.float32), "timestep": np.full((len(x),), t, np.float32)}
             for x, t in zip(z["sample"], z["timesteps"])]
    runners = [TrtRunner(EngineFromPath(str(engine_out / "model.mpq.plan"))),
               OnnxrtRunner(SessionFromOnnx(str(engine_out / "model.mpq.onnx")))]
    results = Comparator.run(runners, data_loader=feeds)
    assert bool(Comparator.compare_accuracy(results, compare_func=SnrCompareFunc(snr_threshold=20.0)))
    assert bool(Comparator.compare_accuracy(results, compare_func=CosineSimilarityCompareFunc(cosine_similarity_threshold=0.99)))


def test_fp8_engine_builds_on_a_gpu_that_runs_fp8(unet_onnx, tmp_path):
    """--gpu auto on an Ada/Hopper/Blackwell GPU offers FP8; an all-FP8 model builds and TensorRT runs FP8 layers."""
    from mpq_export.targets.gpus import detect_gpu, family_of

    seen = detect_gpu()
    fam = family_of(seen[1]) if seen else None
    if fam is None or not any(fam.adds.values()):
        pytest.skip(f"FP8 needs compute capability 8.9+ (this GPU: {seen})")
    out = tmp_path / "fp8"
    code, _, err = run_cli(unet_onnx, "--budget", "8", "-o", out, *FAST, "--formats", "fp16,fp8", "--allocation",
                           "uniform", "--build-engine", "yes")
    assert code == 0, err
    rep = json.loads((out / "report.json").read_text())
    assert rep["gpu"].startswith(fam.name) and rep["format_counts"].get("fp8", 0) > 0
    assert rep["engine"]["status"].startswith("built")
    prec = rep["engine"]["layer_precisions"]
    assert any("fp8" in k.lower() for k in prec if prec[k]), prec
