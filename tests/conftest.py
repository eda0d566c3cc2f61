import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import models  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Tests never touch the user's ~/.cache; one cache per session so reruns of a model reuse it."""
    monkeypatch.setenv("MPQ_EXPORT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


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


def run_cli(*args):
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    import contextlib
    import io

    from mpq_export.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()
