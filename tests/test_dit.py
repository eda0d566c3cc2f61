"""Transformer denoisers (SD3's MMDiT with flow matching, PixArt's DiT with DDIM): diffusers folders and
ONNX files of them quantized end to end on the default tensorrt target at 4.5 bits, and the flow-matching
sampler against diffusers' own scheduler."""

import json
import os
import sys

import numpy as np
import onnx
import pytest
from conftest import run_cli

from mpq_export.runtime.sampler import FlowMatchEulerSampler, NoiseSchedule, sampler_for
from mpq_export.stages.inspect import inspect_model
from mpq_export.stages.quantize import count_weight_bits

TOOLS = os.path.join(os.path.dirname(__file__), "..", "tools")
FAST = ("--steps", "6", "--timesteps", "2", "--samples", "4", "--val-samples", "2", "--no-stability")


def _make(arch, folder):
    pytest.importorskip("diffusers")
    sys.path.insert(0, TOOLS)
    from make_unet import make

    make(arch, str(folder))
    return folder


@pytest.fixture(scope="module")
def sd3_dir(tmp_path_factory):
    return _make("tiny-sd3", tmp_path_factory.mktemp("sd3"))


@pytest.fixture(scope="module")
def pixart_dir(tmp_path_factory):
    return _make("tiny-pixart", tmp_path_factory.mktemp("pixart"))


@pytest.mark.parametrize("shift,dynamic", [(1.0, False), (3.0, False), (1.0, True)])
def test_flow_sigmas_and_timesteps_are_diffusers(shift, dynamic):
    from diffusers import FlowMatchEulerDiscreteScheduler

    ref = FlowMatchEulerDiscreteScheduler(shift=shift, use_dynamic_shifting=dynamic)
    seq = 32 * 32
    if dynamic:  # as FluxPipeline does: its own sigmas, and mu from the image's token count
        m = (ref.config.max_shift - ref.config.base_shift) / (ref.config.max_image_seq_len - ref.config.base_image_seq_len)
        ref.set_timesteps(sigmas=np.linspace(1.0, 1 / 12, 12),
                          mu=seq * m + ref.config.base_shift - m * ref.config.base_image_seq_len)
    else:
        ref.set_timesteps(12)
    mine = sampler_for(NoiseSchedule(kind="flow_matching", shift=shift, use_dynamic_shifting=dynamic), 12,
                       (16, 64, 64))
    np.testing.assert_array_equal(mine.timesteps, ref.timesteps.numpy())
    np.testing.assert_array_equal(mine.sigmas, ref.sigmas.numpy())


def test_the_flow_sampler_follows_diffusers_with_the_same_denoiser(sd3_dir):
    """The tiny SD3 transformer, 4 steps, under diffusers' FlowMatchEulerDiscreteScheduler and under ours."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

    model = SD3Transformer2DModel.from_pretrained(str(sd3_dir / "transformer")).eval()
    sched = FlowMatchEulerDiscreteScheduler.from_pretrained(str(sd3_dir / "scheduler"))
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 4, 16, 16, generator=g)
    ctx, pooled = torch.randn(2, 7, 32, generator=g), torch.randn(2, 32, generator=g)

    def v(x, t):
        with torch.no_grad():
            return model(hidden_states=x, timestep=torch.full((x.shape[0],), float(t)), encoder_hidden_states=ctx,
                         pooled_projections=pooled, return_dict=False)[0]

    sched.set_timesteps(4)
    x = x0.clone()
    for t in sched.timesteps:
        x = sched.step(v(x, t), t, x).prev_sample
    schedule = NoiseSchedule.from_config(str(sd3_dir / "scheduler" / "scheduler_config.json"))
    assert schedule.flow_matching and schedule.shift == 3.0
    ours = sampler_for(schedule, 4, (4, 16, 16)).sample(
        x0.numpy(), lambda xs, t, i: v(torch.from_numpy(xs), t).numpy())
    np.testing.assert_allclose(ours, x.numpy(), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory):
    return _make("tiny-flux", tmp_path_factory.mktemp("flux"))


@pytest.mark.parametrize("family", ["sd3", "pixart", "flux"])
def test_a_transformer_folder_at_4_5_bits_on_tensorrt(family, sd3_dir, pixart_dir, flux_dir, tmp_path):
    """The default target, the paper's budget: INT4 weight-only GEMMs reach nearly every layer."""
    folder = {"sd3": sd3_dir, "pixart": pixart_dir, "flux": flux_dir}[family] / "transformer"
    out = tmp_path / "o"
    # Flux's default text length is T5's 512 tokens: 16 keep the test to seconds
    seq = ("--seq-len", "16") if family == "flux" else ()
    code, _, err = run_cli(folder, "--budget", "4.5", "-o", out, *FAST, *seq)
    assert code == 0, err
    rep = json.loads((out / "report.json").read_text())
    assert rep["target"] == "tensorrt" and rep["check"].startswith("passed")
    counted, _ = count_weight_bits(str(out / "model.mpq.onnx"), inspect_model(rep["model"]))
    assert counted == pytest.approx(rep["achieved_bits"], abs=1e-12) and counted <= 4.5
    assert rep["format_counts"]["w4a16"] >= len(rep["layers"]) * 0.6  # INT4 GEMMs nearly everywhere
    pinned = {l["name"] for l in rep["layers"] if l["pin"] == "fp16 (pinned)"}
    assert pinned == ({"x_embedder", "proj_out"} if family == "flux" else {"pos_embed.proj", "proj_out"})
    if family == "flux":  # Flux-dev's guidance input is a setting, filled with FluxPipeline's default
        assert "guidance 3.5" in rep["calibration"]["conditioning"]
        held = {l["name"] for l in rep["layers"] if l["pin"] and l["pin"].startswith(">= 8")}
        assert {"time_text_embed.guidance_embedder.linear_1", "time_text_embed.timestep_embedder.linear_2"} <= held
    assert rep["validation"]["sample_psnr_db"] > 20  # it runs under onnxruntime, close to FP32
    assert run_cli("check", out)[0] == 0
    md = (out / "report.md").read_text()
    assert ("6-step flow-matching Euler" in md) == (family != "pixart") and ("6-step DDIM" in md) == (family == "pixart")
    # the report's timesteps are what the denoiser receives, in the scheduler's own units
    ts = rep["importance_per_timestep"]["timesteps"]
    schedule = NoiseSchedule.from_config(str(folder.parent / "scheduler" / "scheduler_config.json"))
    assert set(ts) <= {float(t) for t in sampler_for(schedule, 6, (4, 16, 16)).timesteps}
    if family == "sd3":
        from diffusers import FlowMatchEulerDiscreteScheduler

        ref = FlowMatchEulerDiscreteScheduler.from_pretrained(str(folder.parent / "scheduler"))
        ref.set_timesteps(6)
        assert set(ts) <= set(ref.timesteps.tolist()) and any(t != int(t) for t in ts)


def test_exported_transformers_match_their_torch_models(sd3_dir, pixart_dir, tmp_path):
    """Module-path layer names, dynamic batch (and SD3's dynamic size), PixArt's learned sigma cut to the
    noise prediction."""
    import diffusers
    import onnxruntime as ort
    import torch

    from mpq_export.inputs.export import export_module

    rng = np.random.default_rng(0)
    for folder, cls, size in ((sd3_dir, "SD3Transformer2DModel", 24), (pixart_dir, "PixArtTransformer2DModel", 16)):
        model = getattr(diffusers, cls).from_pretrained(str(folder / "transformer")).eval()
        path = str(tmp_path / f"{cls}.onnx")
        export_module(model, path, seq_len=5)
        names = {l.name for l in inspect_model(path).layers}
        assert "transformer_blocks.0.ff.net.2" in names and "proj_out" in names
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        x = rng.standard_normal((3, 4, size, size)).astype(np.float32)
        t = np.full((3,), 321.5, np.float32)
        feeds = {"hidden_states": x, "timestep": t}
        with torch.no_grad():
            if cls == "SD3Transformer2DModel":
                ctx = rng.standard_normal((3, 9, 32)).astype(np.float32)
                pooled = rng.standard_normal((3, 32)).astype(np.float32)
                feeds.update(encoder_hidden_states=ctx, pooled_projections=pooled)
                ref = model(hidden_states=torch.from_numpy(x), timestep=torch.from_numpy(t),
                            encoder_hidden_states=torch.from_numpy(ctx), pooled_projections=torch.from_numpy(pooled),
                            return_dict=False)[0].numpy()
            else:  # PixArt's T5 padding mask is an input: the last tokens masked, as its pipeline pads them
                ctx = rng.standard_normal((3, 9, 32)).astype(np.float32)
                mask = np.ones((3, 9), np.float32)
                mask[:, 6:] = 0
                feeds.update(encoder_hidden_states=ctx, encoder_attention_mask=mask)
                ref = model(torch.from_numpy(x), encoder_hidden_states=torch.from_numpy(ctx),
                            timestep=torch.from_numpy(t), encoder_attention_mask=torch.from_numpy(mask),
                            added_cond_kwargs={"resolution": None, "aspect_ratio": None},
                            return_dict=False)[0].numpy()[:, :4]
        (out,) = sess.run(None, feeds)
        np.testing.assert_allclose(out, ref, rtol=1e-3, atol=1e-4)


def test_an_onnx_file_of_a_transformer_with_its_scheduler_config(sd3_dir, tmp_path):
    import diffusers

    from mpq_export.inputs.export import export_module

    model = diffusers.SD3Transformer2DModel.from_pretrained(str(sd3_dir / "transformer")).eval()
    path = str(tmp_path / "sd3.onnx")
    export_module(model, path)
    assert onnx.load(path, load_external_data=False).graph.input[0].name == "hidden_states"
    code, _, err = run_cli(path, "--budget", "4.5", "-o", tmp_path / "o", "--scheduler-config",
                           sd3_dir / "scheduler" / "scheduler_config.json", *FAST)
    assert code == 0, err
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    assert rep["calibration"]["sampler"] == "flow-matching Euler"  # the given config chose the sampler
    assert rep["calibration"]["schedule"].endswith("scheduler_config.json")
    assert rep["counted_bits"] == pytest.approx(rep["achieved_bits"], abs=1e-12) and rep["counted_bits"] <= 4.5


def test_flow_matching_options_we_do_not_implement_are_refused(tmp_path):
    from mpq_export.util.errors import MPQError

    p = tmp_path / "s.json"
    p.write_text(json.dumps({"_class_name": "FlowMatchEulerDiscreteScheduler", "use_karras_sigmas": True}))
    with pytest.raises(MPQError, match="use_karras_sigmas is not supported"):
        NoiseSchedule.from_config(str(p))
    with pytest.raises(MPQError, match="token count"):
        FlowMatchEulerSampler(NoiseSchedule(kind="flow_matching", use_dynamic_shifting=True), 4)


def test_flux_is_exported_on_latents_as_flux_pipeline_packs_them(flux_dir, tmp_path):
    """The Flux graph takes the 4-D latent and packs it inside: against diffusers' FluxPipeline packing,
    position ids and timestep scale around the torch model, at other batch sizes, sizes and text lengths
    than traced (batch, H, W and the text length stay dynamic)."""
    import onnxruntime as ort
    import torch
    from diffusers import FluxPipeline, FluxTransformer2DModel

    from mpq_export.inputs.export import export_module

    model = FluxTransformer2DModel.from_pretrained(str(flux_dir / "transformer")).eval()
    path = str(tmp_path / "flux.onnx")
    export_module(model, path, seq_len=7)
    info = inspect_model(path)
    assert [c.name for c in info.conditioning] == ["encoder_hidden_states", "pooled_projections", "guidance"]
    names = {l.name for l in info.layers}
    assert {"x_embedder", "single_transformer_blocks.0.proj_mlp", "transformer_blocks.0.attn.add_q_proj",
            "transformer_blocks.0.norm1.linear", "time_text_embed.guidance_embedder.linear_1"} <= names
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    for b, hw, seq in ((1, 16, 7), (3, 8, 12)):
        x = rng.standard_normal((b, 4, hw, hw)).astype(np.float32)
        ctx = rng.standard_normal((b, seq, 32)).astype(np.float32)
        pooled = rng.standard_normal((b, 32)).astype(np.float32)
        t, g = np.full((b,), 731.0, np.float32), np.full((b,), 3.5, np.float32)
        (out,) = sess.run(None, {"hidden_states": x, "timestep": t, "encoder_hidden_states": ctx,
                                 "pooled_projections": pooled, "guidance": g})
        with torch.no_grad():
            packed = FluxPipeline._pack_latents(torch.from_numpy(x), b, 4, hw, hw)
            ids = FluxPipeline._prepare_latent_image_ids(b, hw // 2, hw // 2, "cpu", torch.float32)
            y = model(hidden_states=packed, encoder_hidden_states=torch.from_numpy(ctx),
                      pooled_projections=torch.from_numpy(pooled), timestep=torch.from_numpy(t) / 1000,
                      img_ids=ids, txt_ids=torch.zeros(seq, 3), guidance=torch.from_numpy(g), return_dict=False)[0]
            ref = FluxPipeline._unpack_latents(y, hw * 8, hw * 8, 8).numpy()  # the VAE's factor 8
        np.testing.assert_allclose(out, ref, rtol=1e-3, atol=1e-4)


def test_budget_ranges_tool_sees_the_layers_inspect_finds(sd3_dir, pixart_dir, tmp_path):
    """tools/budget_ranges.py counts layers on the meta device; they must be the exported model's."""
    import diffusers

    sys.path.insert(0, TOOLS)
    from budget_ranges import build

    from mpq_export.inputs.export import model_layers

    from mpq_export.inputs.export import export_module

    for arch, folder in (("tiny-sd3", sd3_dir), ("tiny-pixart", pixart_dir)):
        cls_name, meta_model = build(arch)
        model = getattr(diffusers, cls_name).from_pretrained(str(folder / "transformer")).eval()
        path = str(tmp_path / f"{arch}.onnx")
        export_module(model, path)
        exported = {l.name: (l.params, l.op_type in ("MatMul", "Gemm")) for l in inspect_model(path).layers}
        counted = {l.name: (l.params, l.op_type == "Gemm") for l in model_layers(meta_model)}
        assert counted == exported


def test_without_a_cache_the_fp32_export_is_kept_and_the_printed_cpu_command_passes(sd3_dir, tmp_path):
    """--no-cache: the export lives in the output folder (fp32/), so the report's model path exists
    after the run and the CPU Polygraphy command report.md prints runs as written."""
    import shlex
    import subprocess

    out = tmp_path / "o"
    code, _, err = run_cli(sd3_dir / "transformer", "--budget", "4.5", "-o", out, "--no-cache", *FAST,
                           "--no-act-costs")
    assert code == 0, err
    rep = json.loads((out / "report.json").read_text())
    assert rep["model"] == str(out / "fp32" / "model.onnx") and os.path.exists(rep["model"])
    cmd = rep["polygraphy"]["commands"]["CPU: FP32 ONNX vs quantized ONNX (onnxruntime)"]
    poly = shlex.quote(os.path.join(os.path.dirname(sys.executable), "polygraphy"))
    p = subprocess.run(cmd.replace("polygraphy run", f"{poly} run"), shell=True, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0 and "PASSED" in p.stdout + p.stderr, p.stdout[-2000:] + p.stderr[-2000:]
    from mpq_export.util.output_folder import is_our_output

    assert is_our_output(str(out))  # fp32/ is ours: a rerun may replace the folder


@pytest.mark.slow
def test_the_bundled_trained_dit_keeps_its_samples_at_4_5_bits_on_tensorrt(tmp_path):
    """The trained class-conditional MMDiT (flow matching) with its class conditioning: the default target at
    the paper's budget stays close to FP32 (docs/quality.md has the comparison with peers)."""
    pytest.importorskip("diffusers")
    from mpq_export.inputs.demo import ASSET_DIR

    dit = os.path.join(os.path.dirname(ASSET_DIR), "digits_dit")
    code, _, err = run_cli(os.path.join(dit, "transformer"), "--budget", "4.5", "-o", tmp_path / "o", "--calib-data",
                           os.path.join(dit, "calib_data.npz"), "--steps", "20", "--samples", "16", "--val-samples", "8",
                           "--no-stability", "--no-act-costs")
    assert code == 0, err
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    assert rep["achieved_bits"] <= 4.5 and rep["check"].startswith("passed")
    assert "digits classes" in rep["calibration"]["conditioning"]
    assert rep["validation"]["sample_psnr_db"] > 30


@pytest.mark.parametrize("arch", ["tiny-sd3", "tiny-flux", "tiny-pixart"])
def test_transformer_pipeline_folders_at_4_5_bits_on_tensorrt(arch, tmp_path):
    """A whole SD3 / Flux / PixArt pipeline folder: prompts encoded by the pipeline class's own encode_prompt
    (two CLIPs + T5 for SD3, with classifier-free guidance against the empty prompt; CLIP + T5 for Flux,
    whose guidance is an input; T5 with its padding mask for PixArt), samples decoded by its VAE."""
    pytest.importorskip("transformers")
    folder = _make_pipeline(arch, tmp_path / arch)
    out = tmp_path / "o"
    code, _, err = run_cli(folder, "--budget", "4.5", "-o", out, "--steps", "6", "--timesteps", "2", "--samples", "4",
                           "--val-samples", "2", "--no-stability", "--no-act-costs")
    assert code == 0, err
    rep = json.loads((out / "report.json").read_text())
    cal = rep["calibration"]
    if arch == "tiny-sd3":
        assert "StableDiffusion3Pipeline.encode_prompt" in cal["conditioning"] and "T5EncoderModel" in cal["conditioning"]
        assert cal["guidance_scale"] == 7.0 and cal["unet_rows"] == 8  # both branches of every sample
    elif arch == "tiny-flux":
        assert "FluxPipeline.encode_prompt" in cal["conditioning"] and cal["unet_rows"] == 4
        z = np.load(out / "validation_inputs.npz")
        assert np.all(z["guidance"] == 3.5) and z["encoder_hidden_states"].shape[-2] == 512  # T5's tokens
    else:
        assert "PixArtAlphaPipeline.encode_prompt" in cal["conditioning"] and cal["guidance_scale"] == 4.5
        mask = np.load(out / "validation_inputs.npz")["encoder_attention_mask"]
        assert mask.shape[-1] == 120 and 0 < mask.mean() < 1  # T5's 120 tokens, the padding masked
    counted, _ = count_weight_bits(str(out / "model.mpq.onnx"), inspect_model(rep["model"]))
    assert counted == pytest.approx(rep["achieved_bits"], abs=1e-12) and counted <= 4.5
    assert rep["check"].startswith("passed") and (out / "samples.png").stat().st_size > 1000


def _make_pipeline(arch, folder):
    pytest.importorskip("diffusers")
    sys.path.insert(0, TOOLS)
    from make_unet import make

    make(arch, str(folder), pipeline=True)
    return folder
