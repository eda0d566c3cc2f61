"""gpus: GPU families decide the tensorrt target's formats; --gpu auto reads the driver."""

import os

import pytest

from mpq_export.targets import get_target, gpus
from mpq_export.targets.tensorrt import TensorRTTarget
from mpq_export.util.errors import MPQError

HOPPER = TensorRTTarget(gpus.family("hopper"), "--gpu hopper")


def test_gpu_families_decide_the_tensorrt_formats(monkeypatch):
    assert gpus.family_of((8, 6)).name == "ampere" and gpus.family_of((7, 5)).name == "ampere"
    assert gpus.family_of((8, 9)).name == "ada" and gpus.family_of((9, 0)).name == "hopper"
    assert gpus.family_of((12, 0)).name == "blackwell" and gpus.family_of((6, 1)) is None
    ampere = get_target("tensorrt")
    assert "fp8" not in ampere.format_names()
    for op in ("Conv", "MatMul"):
        names = [f.name for f in HOPPER.formats_for(op)]
        assert "fp8" in names and names[-1] == "fp16"
    monkeypatch.setattr(gpus, "detect_gpu", lambda: None)
    t = ampere.for_gpu("auto")
    assert t.gpu.name == "ampere" and "no GPU seen" in t.gpu_reason
    monkeypatch.setattr(gpus, "detect_gpu", lambda: ("NVIDIA H100 80GB HBM3", (9, 0)))
    t = get_target("tensorrt").for_gpu("auto")
    assert t.gpu.name == "hopper" and "H100" in t.gpu_reason
    assert t.for_gpu("auto") is t  # a chosen table stays chosen
    with pytest.raises(MPQError, match="--gpu hopper chooses the formats of a TensorRT engine"):
        get_target("onnxruntime").for_gpu("hopper")


def test_gpu_detection_respects_cuda_visible_devices(monkeypatch, tmp_path):
    """A fake nvidia-smi: the device CUDA_VISIBLE_DEVICES names is asked for; an empty or negative one is no GPU."""
    fake = tmp_path / "nvidia-smi"
    fake.write_text('#!/bin/sh\nif [ "$3" = "-i" ] && [ "$4" = "1" ]; then echo "NVIDIA L4, 8.9"; '
                    'else echo "NVIDIA A100-SXM4-80GB, 8.0"; fi\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert gpus.detect_gpu() == ("NVIDIA A100-SXM4-80GB", (8, 0)) and gpus.resolve("auto")[0].name == "ampere"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")
    assert gpus.detect_gpu() == ("NVIDIA L4", (8, 9)) and gpus.resolve("auto")[0].name == "ada"
    for hidden in ("", "-1"):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
        assert gpus.detect_gpu() is None and "no GPU seen" in gpus.resolve("auto")[1]
