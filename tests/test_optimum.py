"""optimum: --emit optimum lays the onnxruntime target's graph out as Optimum's ONNX Runtime pipelines load
it; an Optimum ONNX folder is an input whose parts are reused."""

import json
import os
import shutil

import numpy as np
import onnx
import pytest
from conftest import run_cli

from mpq_export.handoffs.trt_demo import check_trt_demo
from mpq_export.stages.inspect import inspect_model
from test_trt_demo import FAST, _info, _shape

GENERATE = r"""
import sys, numpy as np, torch
import optimum.onnxruntime as o
cls = getattr(o, sys.argv[1])
images = []
for folder in sys.argv[2:4]:
    pipe = cls.from_pretrained(folder, provider="CPUExecutionProvider")
    images.append(pipe("a photo of a cat", num_inference_steps=3, height=64, width=64,
                       generator=torch.Generator().manual_seed(0), output_type="np").images[0])
ref, ours = images
mse = float(((ref - ours) ** 2).mean())
print(bool(np.isfinite(ours).all()), 10 * np.log10(1.0 / max(mse, 1e-20)))
"""


def _optimum_python():
    """Optimum's environment, where an earlier --emit optimum made it (the tests' cache is a fresh one)."""
    import subprocess

    from mpq_export.handoffs.optimum import OPTIMUM_ENV

    py = os.environ.get("MPQ_EXPORT_OPTIMUM_PYTHON") or os.path.join(
        os.path.expanduser("~"), ".cache", "mpq-export", "peers", OPTIMUM_ENV, "bin", "python")
    ok = os.path.exists(py) and subprocess.run([py, "-c", "import optimum.onnxruntime"], capture_output=True).returncode == 0
    return py if ok else None


@pytest.mark.parametrize("arch", ["sd", "sdxl"])
def test_optimum_folder_loads_in_optimum_and_generates_close_to_fp32(arch, pipeline_dir, sdxl_pipeline_dir,
                                                                      tmp_path, monkeypatch):
    """--emit optimum on a tiny SD 1.x and SDXL pipeline folder: Optimum's own pipeline class loads the folder
    and generates in 3 steps on the CPU provider; against the same folder with the FP32 UNet, same seed,
    the image is finite and close (measured 29.3 dB for SD, 32.3 dB for SDXL)."""
    import subprocess

    from mpq_export.handoffs.base import copy_tree
    from mpq_export.handoffs.optimum import write_optimum_unet

    py = _optimum_python()
    if py is None:
        pytest.skip("Optimum's environment is not installed here (mpq-export --emit optimum creates it on first use; "
                    "MPQ_EXPORT_OPTIMUM_PYTHON points at another)")
    monkeypatch.setenv("MPQ_EXPORT_OPTIMUM_PYTHON", py)
    folder = pipeline_dir if arch == "sd" else sdxl_pipeline_dir
    out = tmp_path / "o"
    code, _, err = run_cli(folder, "--budget", "8", "--target", "onnxruntime", "--emit", "optimum", "-o", out, *FAST)
    assert code == 0, err
    ours = out / "optimum"
    assert (ours / "model_index.json").exists() and (ours / "unet" / "config.json").exists()
    ref = tmp_path / "fp32"
    copy_tree(str(ours), str(ref))
    os.remove(ref / "unet" / "model.onnx")
    rep = json.loads((out / "report.json").read_text())
    write_optimum_unet(rep["model"], inspect_model(rep["model"]), str(ref / "unet"))
    cls = "ORTStableDiffusionXLPipeline" if arch == "sdxl" else "ORTStableDiffusionPipeline"
    p = subprocess.run([py, "-c", GENERATE, cls, str(ref), str(ours)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    finite, psnr = p.stdout.split()[-2:]
    assert finite == "True" and float(psnr) > 20
    assert cls in rep["handoff"][0]["command"] and rep["handoff"][0]["kind"] == "optimum"


def test_optimum_unet_takes_the_scalar_timestep_optimum_feeds(sd_out, tmp_path):
    """Without Optimum: the UNet written for it declares a scalar timestep, and with one it computes what the
    written model computes with that timestep per row."""
    from mpq_export.runtime.ort import ort_session
    from mpq_export.handoffs.optimum import write_optimum_unet

    info = _info(sd_out)
    (tmp_path / "unet").mkdir()
    path = write_optimum_unet(str(sd_out / "model.mpq.onnx"), info, str(tmp_path / "unet"))
    m = onnx.load(path, load_external_data=False)
    assert _shape(next(i for i in m.graph.input if i.name == "timestep")) == []
    rng = np.random.default_rng(0)
    h, w = info.sample_size or (8, 8)
    feeds = {"sample": rng.standard_normal((2, 4, h, w)).astype(np.float32),
             "encoder_hidden_states": rng.standard_normal((2, info.seq_len, info.conditioning[0].shape[-1])).astype(np.float32)}
    ours = ort_session(path).run(None, {**feeds, "timestep": np.array(300.0, np.float32)})[0]
    ref = ort_session(str(sd_out / "model.mpq.onnx")).run(None, {**feeds, "timestep": np.full(2, 300.0, np.float32)})[0]
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


def test_optimum_refusals_come_before_the_work(pipeline_dir, cond_unet_onnx, tmp_path):
    code, _, err = run_cli(pipeline_dir, "--budget", "8", "--emit", "optimum", "-o", tmp_path / "a", *FAST)
    assert code == 1 and "use --target onnxruntime or drop --emit optimum" in err and err.count("\n") == 1
    code, _, err = run_cli(cond_unet_onnx, "--budget", "8", "--target", "onnxruntime", "--emit", "optimum",
                           "-o", tmp_path / "b", *FAST)
    assert code == 1 and "give the diffusers pipeline folder" in err and "[calibrate]" not in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.fixture(scope="module")
def optimum_like(pipeline_dir, sd_out, tmp_path_factory):
    """An Optimum-layout ONNX folder made without Optimum: model_index.json, scheduler/, tokenizer/ and a
    unet/model.onnx with a scalar timestep and dynamic H, W (as optimum-cli exports them), unet/config.json."""
    from mpq_export.handoffs.optimum import write_optimum_unet

    root = tmp_path_factory.mktemp("optimum-like") / "sd-onnx"
    for part in ("scheduler", "tokenizer"):
        shutil.copytree(os.path.join(pipeline_dir, part), root / part)
    shutil.copy(os.path.join(pipeline_dir, "model_index.json"), root / "model_index.json")
    (root / "unet").mkdir()
    shutil.copy(os.path.join(pipeline_dir, "unet", "config.json"), root / "unet" / "config.json")
    fp32 = json.loads((sd_out / "report.json").read_text())["model"]
    path = write_optimum_unet(fp32, inspect_model(fp32), str(root / "unet"))
    m = onnx.load(path)
    for d in (2, 3):
        m.graph.input[0].type.tensor_type.shape.dim[d].dim_param = "hw"[d - 2]
    onnx.save(m, path)
    return root


def test_an_optimum_folder_is_an_input_and_its_parts_are_reused(optimum_like, tmp_path):
    out = tmp_path / "o"
    code, _, err = run_cli(optimum_like, "--budget", "8", "--target", "onnxruntime", "--emit", "optimum", "-o", out,
                           *FAST)
    assert code == 0, err
    rep = json.loads((out / "report.json").read_text())
    assert rep["model"] == str(optimum_like / "unet" / "model.onnx")
    assert any("Optimum ONNX pipeline folder" in n for n in rep["notes"])
    assert rep["calibration"]["settings"]["resolution"] == [8, 8]  # unet/config.json's sample_size
    ours = out / "optimum"
    for f in ("model_index.json", "scheduler/scheduler_config.json", "tokenizer/vocab.json", "unet/config.json"):
        # copied as given, not exported again; a file of its own (onnx refuses multi-linked external data)
        assert (ours / f).read_bytes() == (optimum_like / f).read_bytes() and os.stat(ours / f).st_nlink == 1
    assert not os.path.samefile(ours / "unet" / "model.onnx", optimum_like / "unet" / "model.onnx")
    m = onnx.load(str(ours / "unet" / "model.onnx"), load_external_data=False)
    assert sum(n.op_type == "DequantizeLinear" for n in m.graph.node) > 10
    # the tensorrt target from the same folder: the demo's [1] timestep reaches a graph made for a scalar one
    out2 = tmp_path / "t"
    code, _, err = run_cli(optimum_like, "--budget", "8", "--emit", "trt-demo", "-o", out2, *FAST)
    assert code == 0, err
    assert check_trt_demo(str(out2 / "trt-demo"), inspect_model(str(optimum_like / "unet" / "model.onnx"))) == []


def test_optimum_outputs_with_external_weights_open_in_onnx_and_have_one_link(optimum_like, tmp_path, monkeypatch):
    """At a lowered external-data threshold: the output's model and optimum/unet/model.onnx load with their
    weights and pass onnx's full checker; every file of the output is a file of its own (one link)."""
    import mpq_export.util.onnx_io as onnx_io

    monkeypatch.setattr(onnx_io, "EXTERNAL_DATA_BYTES", 64 << 10)
    out = tmp_path / "o"
    code, _, err = run_cli(optimum_like, "--budget", "8", "--target", "onnxruntime", "--emit", "optimum", "-o", out,
                           *FAST)
    assert code == 0, err
    for path in (out / "model.mpq.onnx", out / "optimum" / "unet" / "model.onnx"):
        onnx.load(str(path))
        onnx.checker.check_model(str(path), full_check=True)
    assert not (out / "model.mpq.onnx.data").exists() and (out / "optimum" / "unet" / "model.mpq.onnx.data").exists()
    assert [str(p) for p in out.rglob("*") if p.is_file() and os.stat(p).st_nlink > 1] == []


def _export_text_encoder(model, folder):
    """text_encoder/model.onnx as Optimum lays it out (input_ids -> last_hidden_state), by torch's exporter."""
    import torch

    class LastHidden(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, ids):
            return self.m(ids).last_hidden_state

    os.makedirs(folder / "text_encoder")
    ids = torch.zeros(1, model.config.max_position_embeddings, dtype=torch.int64)
    torch.onnx.export(LastHidden(model.eval()), (ids,), str(folder / "text_encoder" / "model.onnx"),
                      input_names=["input_ids"], output_names=["last_hidden_state"], dynamo=False)


def test_exported_parts_must_compute_what_the_pipelines_own_do(pipeline_dir, tmp_path):
    """Each exported part is run beside the pipeline's own module: the same text encoder passes (an
    exporter's float reordering), one whose weights were not read (initialised at random, as Optimum's
    transformers does with names it does not know) is a one-line refusal naming the part and the way out."""
    import transformers

    from mpq_export.handoffs.optimum import PART_TOLERANCE, check_parts, part_errors
    from mpq_export.inputs.sd_pipeline import read_pipeline
    from mpq_export.util.errors import MPQError

    pipe = read_pipeline(str(pipeline_dir))
    te = os.path.join(pipeline_dir, "text_encoder")
    _export_text_encoder(transformers.CLIPTextModel.from_pretrained(te), tmp_path / "good")
    assert part_errors(str(tmp_path / "good"), pipe)["text_encoder"] < 1e-5
    check_parts(str(tmp_path / "good"), pipe)
    config = transformers.CLIPTextConfig.from_pretrained(te)
    _export_text_encoder(transformers.CLIPTextModel(config), tmp_path / "random")
    assert part_errors(str(tmp_path / "random"), pipe)["text_encoder"] > 100 * PART_TOLERANCE
    with pytest.raises(MPQError) as e:
        check_parts(str(tmp_path / "random"), pipe)
    assert "text_encoder (relative error" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("arch", ["sd", "sdxl"])
def test_optimum_export_reads_the_text_encoders_transformers_5_saved(arch, pipeline_dir, sdxl_pipeline_dir, tmp_path,
                                                                     monkeypatch):
    """The tiny pipelines are saved by this environment's transformers (5), whose CLIP weights lack the
    `text_model.` prefix Optimum's transformers looks for: exported through the renamed view, every part
    (text encoders, VAE encoder and decoder) computes what the pipeline's own does."""
    from mpq_export.handoffs.optimum import optimum_export, part_errors
    from mpq_export.inputs.sd_pipeline import read_pipeline

    py = _optimum_python()
    if py is None:
        pytest.skip("Optimum's environment is not installed here (mpq-export --emit optimum creates it on first use; "
                    "MPQ_EXPORT_OPTIMUM_PYTHON points at another)")
    monkeypatch.setenv("MPQ_EXPORT_OPTIMUM_PYTHON", py)
    pipe = read_pipeline(str(pipeline_dir if arch == "sd" else sdxl_pipeline_dir))
    errors = part_errors(optimum_export(pipe, None, str(tmp_path)), pipe)
    parts = {"text_encoder", "vae_decoder", "vae_encoder"} | ({"text_encoder_2"} if arch == "sdxl" else set())
    assert set(errors) == parts and max(errors.values()) < 1e-5, errors
