"""Text-to-image pipeline folders: prompts encoded by the folder's own text encoder, classifier-free
guidance in calibration and validation, samples decoded by its VAE."""

import json
import os

import numpy as np
import pytest
from conftest import run_cli

from mpq_export.util.errors import MPQError

TOOLS = os.path.join(os.path.dirname(__file__), "..", "tools")
FAST = ("--steps", "6", "--timesteps", "2", "--samples", "4", "--val-samples", "2", "--no-stability", "--no-act-costs")


def _report(out) -> dict:
    return json.loads((out / "report.json").read_text())


def test_pipeline_folder_calibrates_on_prompts_with_guidance(pipeline_dir, tmp_path):
    code, _, err = run_cli(pipeline_dir, "--budget", "8", "-o", tmp_path / "o", "--cache-dir", tmp_path / "cache", *FAST)
    assert code == 0, err
    rep = _report(tmp_path / "o")
    cal = rep["calibration"]
    assert cal["guidance_scale"] == 7.5  # StableDiffusionPipeline's default
    assert cal["samples"] == 4 and cal["unet_rows"] == 8  # both branches of every sample
    assert "241 prompts from the bundled prompt set" in cal["conditioning"]
    assert "CLIPTextModel" in cal["conditioning"] and "guidance 7.5" in cal["conditioning"]
    assert "scheduler_config.json" in cal["schedule"]
    assert (tmp_path / "o" / "samples.png").stat().st_size > 1000  # decoded by the pipeline's VAE
    assert rep["validation"]["sample_psnr_db"] > 10
    # the validation inputs Polygraphy replays are the UNet's rows: (uncond, cond) pairs
    z = np.load(tmp_path / "o" / "validation_inputs.npz")
    assert z["encoder_hidden_states"].shape[0] == 2 * 2
    e = z["encoder_hidden_states"]
    assert np.allclose(e[0], e[2]) and not np.allclose(e[0], e[1])  # one empty prompt, different prompts
    # the embeddings are cached: a second run (another budget) does not encode again
    code, _, err = run_cli(pipeline_dir, "--budget", "7.5", "-o", tmp_path / "o2", "--cache-dir", tmp_path / "cache",
                           *FAST)
    assert code == 0 and "reusing encoded prompts" in err and "encoding" not in err


def test_sdxl_pipeline_carries_text_embeds_and_time_ids(sdxl_pipeline_dir, tmp_path):
    """SDXL: two text encoders (penultimate states concatenated, pooled projection as text_embeds),
    time_ids from the image size, zeros for the unconditional branch, guidance 5 by default."""
    code, _, err = run_cli(sdxl_pipeline_dir, "--budget", "8", "-o", tmp_path / "o", "--no-cache", *FAST)
    assert code == 0, err
    cal = _report(tmp_path / "o")["calibration"]
    assert cal["guidance_scale"] == 5.0 and cal["unet_rows"] == 8
    assert "CLIPTextModel + CLIPTextModelWithProjection" in cal["conditioning"]
    z = np.load(tmp_path / "o" / "validation_inputs.npz")
    assert z["text_embeds"].shape == (4, 16) and z["encoder_hidden_states"].shape[2] == 32
    assert np.all(z["encoder_hidden_states"][0::2] == 0) and np.all(z["text_embeds"][0::2] == 0)  # zeros uncond
    assert np.any(z["text_embeds"][1::2] != 0)
    assert np.all(z["time_ids"] == [16, 16, 0, 0, 16, 16])  # 8x8 latents, VAE factor 2


def test_guidance_scale_one_runs_the_conditional_branch_only(pipeline_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat on a mat\n\n# a comment\na dog in the fog\n")
    code, _, err = run_cli(pipeline_dir, "--budget", "8", "-o", tmp_path / "o", "--no-cache", "--guidance-scale", "1",
                           "--prompts", prompts, *FAST)
    assert code == 0, err
    cal = _report(tmp_path / "o")["calibration"]
    assert cal["guidance_scale"] == 1 and cal["unet_rows"] == 4
    assert cal["conditioning"].startswith(f"2 prompts from {prompts}") and "classifier-free" not in cal["conditioning"]


@pytest.mark.parametrize("args, needle", [
    (("--prompts", "EMPTY"), "holds no prompts"),
    (("--prompts", "missing.txt"), "--prompts file not found"),
    (("--guidance-scale", "0.5"), "--guidance-scale must be a number >= 1"),
    (("--prompts", "EMPTY", "--calib-data", "x.npz"), "not both"),
])
def test_bad_prompt_options_are_one_line_errors(pipeline_dir, tmp_path, args, needle):
    (tmp_path / "EMPTY").write_text("\n# nothing\n")
    args = [str(tmp_path / a) if a in ("EMPTY", "missing.txt") else a for a in args]
    code, out, err = run_cli(pipeline_dir, "--budget", "8", "-o", tmp_path / "o", "--no-cache", *args, *FAST)
    lines = err.strip().splitlines()
    assert code != 0 and lines[-1].startswith("mpq-export: error:") and needle in lines[-1], err
    assert "Traceback" not in err and "[export]" not in err  # refused before the export
    assert not (tmp_path / "o").exists()


def test_prompts_need_a_pipeline_folder(cond_unet_onnx, tmp_path):
    p = tmp_path / "p.txt"
    p.write_text("a cat\n")
    code, _, err = run_cli(cond_unet_onnx, "--budget", "8", "--prompts", p, "-o", tmp_path / "o", *FAST)
    assert code != 0 and "--prompts needs a diffusers pipeline folder" in err


def test_guided_prediction_combines_the_two_rows_of_each_sample():
    from mpq_export.runtime.sampler import guided

    seen = []

    def model_rows(x, t, i):  # row r -> constant r: uncond rows even, cond rows odd
        seen.append(x.shape[0])
        return np.arange(x.shape[0], dtype=np.float32)[:, None] * np.ones_like(x)

    x = np.zeros((3, 2), np.float32)
    eps = guided(model_rows, 7.5)(x, 10, 0)
    assert seen == [6]
    expected = np.array([0 + 7.5 * 1, 2 + 7.5 * 1, 4 + 7.5 * 1], np.float32)  # u + s (c - u), c - u = 1
    assert np.allclose(eps[:, 0], expected)
    assert guided(model_rows, 1.0)(x, 10, 0).shape == (3, 2) and seen[-1] == 3


def test_conditioning_file_gives_uncond_rows_next_to_cond_rows(cond_unet_onnx, tmp_path):
    from mpq_export.stages.inspect import inspect_model
    from mpq_export.inputs.conditioning import load_conditioning

    info = inspect_model(cond_unet_onnx)
    cond = np.random.default_rng(0).standard_normal((5, 8, 16)).astype(np.float32)
    uncond = np.full((1, 8, 16), 3.0, np.float32)
    path = str(tmp_path / "c.npz")
    np.savez(path, encoder_hidden_states=cond, uncond_encoder_hidden_states=uncond)
    rows, source = load_conditioning(info, path, 3, seed=2, guidance_scale=4.0)
    e = rows["encoder_hidden_states"]
    assert e.shape == (6, 8, 16) and "guidance 4" in source
    assert np.all(e[0::2] == 3.0)  # unconditional rows
    assert np.array_equal(e[1::2], cond[[2, 3, 4]])  # sample j takes row (seed + j) mod rows
    no_guidance, _ = load_conditioning(info, path, 3, seed=4)
    assert np.array_equal(no_guidance["encoder_hidden_states"], cond[[4, 0, 1]])
    np.savez(path, encoder_hidden_states=cond)
    with pytest.raises(MPQError, match="uncond_encoder_hidden_states"):
        load_conditioning(info, path, 3, seed=0, guidance_scale=4.0)
    with pytest.raises(MPQError, match="needs the unconditional"):
        load_conditioning(info, None, 3, seed=0, guidance_scale=4.0)


def test_a_cut_short_vae_is_refused_before_any_work(pipeline_dir, tmp_path):
    import shutil

    broken = tmp_path / "pipe"
    shutil.copytree(pipeline_dir, broken)
    (weights,) = [p for p in (broken / "vae").iterdir() if p.suffix in (".safetensors", ".bin")]
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    code, _, err = run_cli(broken, "--budget", "8", "-o", tmp_path / "o", "--cache-dir", tmp_path / "c", *FAST)
    assert code == 1 and err.strip().splitlines()[-1].startswith("mpq-export: error:")
    assert "VAE weight file" in err and "cut short" in err and "[export]" not in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()




def test_the_prompt_cache_key_follows_which_parts_model_index_enables(sd3_pipeline_dir, tmp_path):
    """SD3 without its T5 (text_encoder_3 set to [null, null]: the pipeline then runs with CLIP alone) encodes
    to other embeddings: the cached prompts of the whole pipeline are not reused for it, though no file of
    the encoders changed."""
    import shutil

    from mpq_export.inputs.sd_pipeline import PromptSet, encode_prompts, read_pipeline

    pipe_dir = tmp_path / "sd3"
    shutil.copytree(sd3_pipeline_dir, pipe_dir)
    prompts = PromptSet(("a photo of a cat", "a red car"), "test")
    whole = encode_prompts(read_pipeline(str(pipe_dir)), prompts, str(tmp_path / "c"))
    index = json.loads((pipe_dir / "model_index.json").read_text())
    index["text_encoder_3"] = index["tokenizer_3"] = [None, None]
    (pipe_dir / "model_index.json").write_text(json.dumps(index))
    no_t5 = encode_prompts(read_pipeline(str(pipe_dir)), prompts, str(tmp_path / "c"))
    assert no_t5.path != whole.path and "T5EncoderModel" not in no_t5.encoder and "T5EncoderModel" in whole.encoder
