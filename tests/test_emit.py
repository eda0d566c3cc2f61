"""emit: --emit trt-demo lays the tensorrt target's graph out as TensorRT's demo/Diffusion loads it (SD 1.x
and SDXL), and the contract checker catches what the demo would not take."""

import json
import os
import shutil

import numpy as np
import onnx
import pytest
from conftest import run_cli
from onnx import TensorProto, helper

from mpq_export.handoffs.trt_demo import check_trt_demo, emit_trt_demo, run_with_demo_feeds
from mpq_export.stages.inspect import inspect_model

FAST = ("--steps", "6", "--timesteps", "2", "--samples", "4", "--val-samples", "2", "--no-stability", "--no-act-costs")
SD_INPUTS = ["sample", "timestep", "encoder_hidden_states"]


@pytest.fixture(scope="module")
def sd_out(pipeline_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("emit") / "sd"
    code, _, err = run_cli(pipeline_dir, "--budget", "8", "--emit", "trt-demo", "-o", out, *FAST)
    assert code == 0, err
    return out


def _info(out):
    return inspect_model(json.loads((out / "report.json").read_text())["model"])


def _shape(vi):
    return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]


@pytest.mark.parametrize("arch", ["sd", "sdxl"])
def test_trt_demo_folder_matches_the_demo_contract(arch, sd_out, sdxl_pipeline_dir, tmp_path):
    if arch == "sd":
        out = sd_out
    else:
        out = tmp_path / "xl"
        code, _, err = run_cli(sdxl_pipeline_dir, "--budget", "8", "--emit", "trt-demo", "-o", out, *FAST)
        assert code == 0, err
    name = "unet" if arch == "sd" else "unetxl"
    path = out / "trt-demo" / f"{name}.opt" / "model.onnx"
    m = onnx.load(str(path), load_external_data=False)
    inputs = {i.name: _shape(i) for i in m.graph.input}
    want = SD_INPUTS + (["text_embeds", "time_ids"] if arch == "sdxl" else [])
    assert list(inputs) == want and [o.name for o in m.graph.output] == ["latent"]
    assert inputs["timestep"] == [1]  # the demo's static timestep
    assert inputs["sample"][0] == "2B" and inputs["sample"][2:] == ["H", "W"] and inputs["sample"][1] == 4
    assert inputs["encoder_hidden_states"][:2] == ["2B", 77]
    if arch == "sdxl":
        assert inputs["time_ids"] == ["2B", 6] and inputs["text_embeds"][0] == "2B"
    assert _shape(m.graph.output[0])[0] == "2B"
    info = _info(out)
    assert check_trt_demo(str(out / "trt-demo"), info) == []
    # the graph still is the tensorrt target's, and runs with the demo's feeds
    assert sum(n.op_type == "DequantizeLinear" for n in m.graph.node) > 10
    feeds = run_with_demo_feeds(str(out / "trt-demo"), info, batch=4)
    assert feeds["latent"].shape == feeds["sample"].shape and np.isfinite(feeds["latent"]).all()
    rep = json.loads((out / "report.json").read_text())
    (h,) = rep["handoff"]
    script = "demo_txt2img_xl.py" if arch == "sdxl" else "demo_txt2img.py"
    assert h["kind"] == "trt-demo" and script in h["command"] and f"--onnx-dir {out / 'trt-demo'}" in h["command"]
    assert "Hand-off: trt-demo" in (out / "report.md").read_text()


def test_a_rerun_replaces_an_output_with_a_trt_demo_folder(pipeline_dir, sd_out, tmp_path):
    out = tmp_path / "again"
    shutil.copytree(sd_out, out)
    code, _, err = run_cli(pipeline_dir, "--budget", "7.9", "--emit", "trt-demo", "-o", out, *FAST)
    assert code == 0, err
    (out / "trt-demo" / "unet.opt" / "notes.txt").write_text("a user's file")
    code, _, err = run_cli(pipeline_dir, "--budget", "8", "-o", out, *FAST)
    assert code == 1 and "holds files mpq-export did not write" in err
    assert (out / "trt-demo" / "unet.opt" / "notes.txt").exists()


def test_external_weights_are_linked_and_named_relatively(sd_out, tmp_path):
    """A model with external weights (every Stable-Diffusion-size one): the demo folder refers to them by
    name beside its model.onnx, and the same bytes are there (linked, not copied, on one file system)."""
    info = _info(sd_out)
    src = tmp_path / "q"
    src.mkdir()
    m = onnx.load(str(sd_out / "model.mpq.onnx"))
    onnx.save(m, str(src / "model.mpq.onnx"), save_as_external_data=True, location="model.mpq.onnx.data",
              size_threshold=0)
    out = tmp_path / "out"
    out.mkdir()
    h = emit_trt_demo(str(src / "model.mpq.onnx"), info, str(out), str(out))
    folder = out / "trt-demo" / "unet.opt"
    assert sorted(os.listdir(folder)) == ["model.mpq.onnx.data", "model.onnx"]
    assert os.path.samefile(folder / "model.mpq.onnx.data", src / "model.mpq.onnx.data")
    assert check_trt_demo(str(out / "trt-demo"), info) == [] and h.model == str(folder / "model.onnx")


def test_checker_names_what_the_demo_would_not_take(sd_out, tmp_path):
    info = _info(sd_out)
    bad = tmp_path / "trt-demo"
    shutil.copytree(sd_out / "trt-demo", bad)
    path = bad / "unet.opt" / "model.onnx"
    m = onnx.load(str(path))
    m.graph.output[0].name = "out_sample"
    for n in m.graph.node:
        n.output[:] = ["out_sample" if o == "latent" else o for o in n.output]
    m.graph.input[1].type.tensor_type.shape.dim[0].dim_param = "batch"
    # an FP32 tensor added to an FP16 one: a strongly typed build refuses the Add
    add = next(n for n in m.graph.node if n.op_type == "Add" and all(i for i in n.input))
    cast = helper.make_node("Cast", [add.input[0]], ["to_fp32_for_test"], to=TensorProto.FLOAT, name="cast_for_test")
    add.input[0] = "to_fp32_for_test"
    m.graph.node.insert(list(m.graph.node).index(add), cast)
    onnx.save(m, str(path))
    problems = check_trt_demo(str(bad), info)
    assert any("the demo's is ['latent']" in p for p in problems)
    assert any(p.startswith("timestep has shape ['batch']") for p in problems)
    assert any("mixes FLOAT, FLOAT16" in p for p in problems), problems


def test_trt_demo_refusals_come_before_the_work(cond_unet_onnx, unet_onnx, tmp_path):
    code, _, err = run_cli(cond_unet_onnx, "--budget", "8", "--target", "onnxruntime", "--emit", "trt-demo",
                           "-o", tmp_path / "a", *FAST)
    assert code == 1 and "use --target tensorrt or drop --emit trt-demo" in err and err.count("\n") == 1
    code, _, err = run_cli(unet_onnx, "--budget", "8", "--emit", "trt-demo", "-o", tmp_path / "b", *FAST)
    assert code == 1 and "takes a text-conditioned UNet" in err and "[calibrate]" not in err
    code, _, err = run_cli(unet_onnx, "--budget", "8", "--emit", "trt", "-o", tmp_path / "c", *FAST)
    assert code == 1 and "--emit takes a comma list of" in err
    assert not any((tmp_path / d).exists() for d in "abc")


def _optimum_python():
    """Optimum's environment, where an earlier --emit optimum made it (the tests' cache is a fresh one)."""
    import subprocess

    from mpq_export.handoffs.optimum import OPTIMUM_ENV

    py = os.environ.get("MPQ_EXPORT_OPTIMUM_PYTHON") or os.path.join(
        os.path.expanduser("~"), ".cache", "mpq-export", "peers", OPTIMUM_ENV, "bin", "python")
    ok = os.path.exists(py) and subprocess.run([py, "-c", "import optimum.onnxruntime"], capture_output=True).returncode == 0
    return py if ok else None


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


@pytest.mark.parametrize("arch", ["sd", "sdxl"])
def test_optimum_folder_loads_in_optimum_and_generates_close_to_fp32(arch, pipeline_dir, sdxl_pipeline_dir,
                                                                      tmp_path, monkeypatch):
    """--emit optimum on a tiny SD 1.x and SDXL pipeline folder: Optimum's own pipeline class loads the folder
    and generates in 3 steps on the CPU provider; against the same folder with the FP32 UNet, same seed,
    the image is finite and close (measured 29.3 dB for SD, 32.3 dB for SDXL)."""
    import subprocess

    from mpq_export.handoffs.base import copy_tree as _link_tree
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
    _link_tree(str(ours), str(ref))
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
        assert os.path.samefile(ours / f, optimum_like / f)  # linked as given, not exported again
    assert not os.path.samefile(ours / "unet" / "model.onnx", optimum_like / "unet" / "model.onnx")
    m = onnx.load(str(ours / "unet" / "model.onnx"), load_external_data=False)
    assert sum(n.op_type == "DequantizeLinear" for n in m.graph.node) > 10
    # the tensorrt target from the same folder: the demo's [1] timestep reaches a graph made for a scalar one
    out2 = tmp_path / "t"
    code, _, err = run_cli(optimum_like, "--budget", "8", "--emit", "trt-demo", "-o", out2, *FAST)
    assert code == 0, err
    assert check_trt_demo(str(out2 / "trt-demo"), inspect_model(str(optimum_like / "unet" / "model.onnx"))) == []
