import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import models  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Tests never touch the user's ~/.cache; one cache per session so reruns of a model reuse it.
    Session-scoped, so module- and session-scoped fixtures that run the CLI are covered too."""
    old = os.environ.get("MPQ_EXPORT_CACHE")
    os.environ["MPQ_EXPORT_CACHE"] = str(tmp_path_factory.getbasetemp() / "cache")
    yield
    if old is None:
        os.environ.pop("MPQ_EXPORT_CACHE", None)
    else:
        os.environ["MPQ_EXPORT_CACHE"] = old


@pytest.fixture(scope="session")
def unet_onnx(tmp_path_factory):
    """A random-weight UNet2DModel with attention (16x16, 1 channel), exported with torch."""
    pytest.importorskip("torch")
    return models.export(models.tiny_unet2d(), str(tmp_path_factory.mktemp("unet2d")))


@pytest.fixture(scope="session")
def cond_unet_onnx(tmp_path_factory):
    """A random-weight UNet2DConditionModel with cross-attention (8x8 latent, 4 channels)."""
    pytest.importorskip("torch")
    return models.export(models.tiny_unet2d_condition(), str(tmp_path_factory.mktemp("unet2dcond")))


TOOLS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools")


def _pipeline(tmp_path_factory, arch: str) -> str:
    pytest.importorskip("transformers")
    pytest.importorskip("diffusers")
    sys.path.insert(0, TOOLS)
    from make_unet import make

    folder = str(tmp_path_factory.mktemp("pipe") / arch)
    make(arch, folder, pipeline=True)
    return folder


@pytest.fixture(scope="session")
def pipeline_dir(tmp_path_factory):
    """A tiny random StableDiffusionPipeline folder, built offline (tools/make_unet.py tiny --pipeline)."""
    return _pipeline(tmp_path_factory, "tiny")


@pytest.fixture(scope="session")
def sdxl_pipeline_dir(tmp_path_factory):
    """A tiny random StableDiffusionXLPipeline folder (tools/make_unet.py tiny-xl --pipeline)."""
    return _pipeline(tmp_path_factory, "tiny-xl")


def run_cli(*args):
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    import contextlib
    import io

    from mpq_export.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


EMIT_FAST = ("--steps", "6", "--timesteps", "2", "--samples", "4", "--val-samples", "2", "--no-stability",
             "--no-act-costs")


@pytest.fixture(scope="session")
def sd_out(pipeline_dir, tmp_path_factory):
    """The tiny SD pipeline quantized for tensorrt at 8 bits with --emit trt-demo (shared by the hand-off tests)."""
    out = tmp_path_factory.mktemp("emit") / "sd"
    code, _, err = run_cli(pipeline_dir, "--budget", "8", "--emit", "trt-demo", "-o", out, *EMIT_FAST)
    assert code == 0, err
    return out


@pytest.fixture(scope="session")
def calibrated(unet_onnx):
    """The tests' tiny UNet2DModel inspected and calibrated along a short DDIM trajectory."""
    from mpq_export.runtime.sampler import NoiseSchedule
    from mpq_export.stages.calibrate import CalibrationSettings, calibrate
    from mpq_export.stages.inspect import inspect_model

    info = inspect_model(unet_onnx)
    stats = calibrate(info, CalibrationSettings(steps=10, timesteps=3, samples=8), NoiseSchedule())
    return info, stats


def run_cpu_check(out_dir: str, fp32_model: str, timeout_s: int = 600) -> tuple[bool, str]:
    """The report's printed CPU Polygraphy command (both halves), run as a user would paste it, with this
    Python's polygraphy; (passed, last output lines)."""
    import shlex
    import subprocess

    from mpq_export.runtime.polygraphy_replay import commands

    cmd = commands(out_dir, fp32_model)["CPU: FP32 ONNX vs quantized ONNX (onnxruntime)"]
    poly = os.path.join(os.path.dirname(sys.executable), "polygraphy")
    exe = shlex.quote(poly) if os.path.exists(poly) else "polygraphy"
    cmd = cmd.replace("polygraphy run", f"{exe} run")
    p = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=timeout_s)
    tail = "\n".join(p.stdout.strip().splitlines()[-12:] + p.stderr.strip().splitlines()[-3:])
    return p.returncode == 0, tail


@pytest.fixture(scope="session")
def sd3_pipeline_dir(tmp_path_factory):
    """A tiny random StableDiffusion3Pipeline folder (tools/make_unet.py tiny-sd3 --pipeline): two CLIPs with
    projection and a T5, each with its tokenizer."""
    return _pipeline(tmp_path_factory, "tiny-sd3")


@pytest.fixture(scope="session")
def flux_folder(tmp_path_factory):
    """A tiny random FluxTransformer2DModel folder with its scheduler (tools/make_unet.py tiny-flux)."""
    pytest.importorskip("diffusers")
    sys.path.insert(0, TOOLS)
    from make_unet import make

    folder = str(tmp_path_factory.mktemp("flux") / "tiny-flux")
    make("tiny-flux", folder)
    return folder
