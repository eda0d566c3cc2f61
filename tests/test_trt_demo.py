"""trt_demo: --emit trt-demo lays the tensorrt target's graph out as TensorRT's demo/Diffusion loads it (SD 1.x
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


def test_outputs_with_external_weights_open_in_onnx_polygraphy_and_check(pipeline_dir, tmp_path, monkeypatch):
    """A model large enough for external weights (the threshold lowered to 64 KB here; 256 MB in use): the
    output's model and the demo's copy open in onnx (load, the full checker), Polygraphy's inspect and
    `mpq-export check`; one copy of the weights, in the demo folder, named by a relative path; and no file of
    the output has a second hard link (onnx >= 1.23 refuses such external data as a "hardlink attack")."""
    import subprocess
    import sys

    import mpq_export.util.onnx_io as onnx_io
    from onnx.external_data_helper import uses_external_data

    monkeypatch.setattr(onnx_io, "EXTERNAL_DATA_BYTES", 64 << 10)
    out = tmp_path / "big"
    code, _, err = run_cli(pipeline_dir, "--budget", "8", "--emit", "trt-demo", "-o", out, *FAST)
    assert code == 0, err
    main, demo = out / "model.mpq.onnx", out / "trt-demo" / "unet.opt" / "model.onnx"
    assert sorted(os.listdir(demo.parent)) == ["model.mpq.onnx.data", "model.onnx"]
    assert not (out / "model.mpq.onnx.data").exists()  # one copy of the weights
    polygraphy = os.path.join(os.path.dirname(sys.executable), "polygraphy")
    for path in (main, demo):
        m = onnx.load(str(path), load_external_data=False)
        assert any(uses_external_data(t) for t in m.graph.initializer)
        onnx.load(str(path))  # with the weights
        onnx.checker.check_model(str(path), full_check=True)
        p = subprocess.run([polygraphy, "inspect", "model", str(path)], capture_output=True, text=True)
        assert p.returncode == 0, p.stderr[-1000:]
    code, stdout, err = run_cli("check", main)
    assert code == 0 and "OK" in stdout, err
    assert [str(p) for p in out.rglob("*") if p.is_file() and os.stat(p).st_nlink > 1] == []
    info = _info(out)
    assert check_trt_demo(str(out / "trt-demo"), info) == []
    feeds = run_with_demo_feeds(str(out / "trt-demo"), info)
    assert np.isfinite(feeds["latent"]).all()


def test_emit_api_keeps_one_copy_of_external_weights(sd_out, tmp_path):
    """emit_trt_demo from Python on a model with external weights: they move beside the demo's model.onnx,
    named by their base name there, and the source model then names them by the relative path."""
    info = _info(sd_out)
    src = tmp_path / "q"
    src.mkdir()
    m = onnx.load(str(sd_out / "model.mpq.onnx"))
    onnx.save(m, str(src / "model.mpq.onnx"), save_as_external_data=True, location="model.mpq.onnx.data",
              size_threshold=0)
    h = emit_trt_demo(str(src / "model.mpq.onnx"), info, str(src), str(src))
    folder = src / "trt-demo" / "unet.opt"
    assert sorted(os.listdir(folder)) == ["model.mpq.onnx.data", "model.onnx"]
    assert os.stat(folder / "model.mpq.onnx.data").st_nlink == 1 and not (src / "model.mpq.onnx.data").exists()
    locations = {e.value for t in onnx.load(str(src / "model.mpq.onnx"), load_external_data=False).graph.initializer
                 for e in t.external_data if e.key == "location"}
    assert locations == {os.path.join("trt-demo", "unet.opt", "model.mpq.onnx.data")}
    onnx.checker.check_model(str(src / "model.mpq.onnx"), full_check=True)
    assert check_trt_demo(str(src / "trt-demo"), info) == [] and h.model == str(folder / "model.onnx")


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






def test_the_printed_command_is_todays_demo_and_each_output_has_its_engines(sd_out, tmp_path):
    """SD 1.x is `--version 1.4` in demo/Diffusion since TensorRT 10.15 (1.5 before, said beside it); the
    engine folder is the output's own (the demo reuses any engine it finds there); the latent sizes that
    run are stated, and onnxruntime confirms them: a multiple runs, a size between does not."""
    import onnxruntime as ort

    from mpq_export.handoffs.trt_demo import demo_command, latent_multiple

    sd1, sd2, xl = (demo_command(n, w, "/o/trt-demo", (512, 512)) for n, w in
                    (("unet", 768), ("unet", 1024), ("unetxl", 2048)))
    assert sd1.split("  #")[0].endswith("--version 1.4") and "10.14 and earlier: --version 1.5" in sd1
    assert "--version 2.1" in sd2 and "no SD 2.x since 10.15" in sd2
    assert xl.startswith("python3 demo_txt2img_xl.py") and xl.endswith("--version xl-1.0")
    (h,) = json.loads((sd_out / "report.json").read_text())["handoff"]
    assert f"--engine-dir {sd_out / 'trt-demo'}-engines" in h["command"] and "--engine-dir engine " not in h["command"]
    m = latent_multiple(str(sd_out / "model.mpq.onnx"))
    assert m == 2 and f"multiples of {m}" in h["checked"]  # the tiny UNet has one downsampler
    sess = ort.InferenceSession(str(sd_out / "trt-demo" / "unet.opt" / "model.onnx"), providers=["CPUExecutionProvider"])
    info = _info(sd_out)
    d = info.conditioning[0].shape[-1]

    def run(size):
        feeds = {"sample": np.zeros((2, 4, size, size), np.float32), "timestep": np.array([500.0], np.float32),
                 "encoder_hidden_states": np.zeros((2, 77, d), np.float32)}
        return sess.run(None, feeds)[0]

    assert run(2 * m * 3).shape[-1] == 2 * m * 3
    with pytest.raises(Exception):
        run(2 * m * 3 + 1)
