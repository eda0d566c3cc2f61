"""A diffusers text-to-image pipeline folder: its parts, its prompts encoded, its latents decoded.

A Stable Diffusion user holds a pipeline folder (model_index.json, unet/, scheduler/, text_encoder/,
tokenizer/, vae/), and the UNet in it runs under classifier-free guidance on text embeddings. The
prepare step takes unet/ and scheduler/ from the folder and encodes a prompt set once with the folder's
own tokenizer and text encoder, as the pipeline would (padded to the tokenizer's length, last hidden
state), together with the empty prompt for the unconditional branch. The embeddings are written as an
.npz that calibration and validation read like --calib-data (`encoder_hidden_states`,
`uncond_encoder_hidden_states`), cached by the content of the encoder, the tokenizer and the prompts.
When the folder has a vae/, validation's final latents are decoded for samples.png.

torch, transformers and diffusers are imported here only, lazily (extra `[torch]`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import numpy as np

from mpq_export.errors import MPQError
from mpq_export.export import quiet_hf_libraries
from mpq_export.progress import log
from mpq_export.runtime import DESCRIPTION_KEY as SOURCE_KEY

MODEL_INDEX = "model_index.json"
DEFAULT_PROMPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "calib_data", "prompts.txt")
# diffusers' own defaults for its pipelines' guidance_scale
GUIDANCE_DEFAULTS = {"StableDiffusionXLPipeline": 5.0}
DEFAULT_GUIDANCE = 7.5
MAX_PROMPT_CHARS = 2000
ENCODE_BATCH = 16


@dataclass(frozen=True)
class PipelineFolder:
    root: str
    class_name: str  # model_index.json's _class_name, e.g. StableDiffusionPipeline
    unet_dir: str
    scheduler_config: str | None
    text_encoder_dir: str | None
    tokenizer_dir: str | None
    vae_dir: str | None

    @property
    def default_guidance(self) -> float:
        return GUIDANCE_DEFAULTS.get(self.class_name, DEFAULT_GUIDANCE)


@dataclass(frozen=True)
class PromptSet:
    prompts: tuple[str, ...]
    source: str  # "the bundled prompt set" or the file's path


@dataclass(frozen=True)
class PromptEmbeddings:
    path: str  # .npz with encoder_hidden_states [P, S, D] and uncond_encoder_hidden_states [1, S, D]
    prompts: int
    encoder: str  # the text encoder's class
    description: str


def is_pipeline_folder(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, MODEL_INDEX))


def _part(root: str, index: dict, name: str, required_file: str) -> str | None:
    d = os.path.join(os.path.abspath(root), name)
    if name in index and os.path.isfile(os.path.join(d, required_file)):
        return d
    return None


def read_pipeline(path: str) -> PipelineFolder:
    """The parts of a diffusers pipeline folder, or a one-line error naming what is missing."""
    index_path = os.path.join(path, MODEL_INDEX)
    try:
        with open(index_path) as f:
            index = json.load(f)
    except (OSError, ValueError) as e:
        raise MPQError(f"{index_path} is not readable JSON ({type(e).__name__}); give a pipeline folder saved with "
                       f"save_pretrained") from None
    if not isinstance(index, dict):
        raise MPQError(f"{index_path} is not a JSON object; give a pipeline folder saved with save_pretrained")
    cls = str(index.get("_class_name", ""))
    if "StableDiffusionXL" in cls or "text_encoder_2" in index:
        raise MPQError(f"{path} is an SDXL pipeline ({cls}); its UNet takes text_embeds and time_ids, which this "
                       f"version cannot export yet: quantize an SD 1.x/2.x pipeline, or export the UNet to ONNX "
                       f"yourself and give --calib-data")
    unet = os.path.join(path, "unet")
    if not os.path.isfile(os.path.join(unet, "config.json")):
        raise MPQError(f"pipeline folder {path} has no unet/config.json; give a complete pipeline saved with "
                       f"save_pretrained")
    sched = os.path.join(path, "scheduler", "scheduler_config.json")
    return PipelineFolder(root=os.path.abspath(path), class_name=cls, unet_dir=unet,
                          scheduler_config=sched if os.path.isfile(sched) else None,
                          text_encoder_dir=_part(path, index, "text_encoder", "config.json"),
                          tokenizer_dir=_part(path, index, "tokenizer", "tokenizer_config.json"),
                          vae_dir=_part(path, index, "vae", "config.json"))


def load_prompts(path: str | None) -> PromptSet:
    """One prompt per non-empty line (UTF-8); the bundled set when `path` is None."""
    src = path or DEFAULT_PROMPTS
    if not os.path.isfile(src):
        raise MPQError(f"--prompts file not found: {src} (one prompt per line)")
    try:
        with open(src, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
    except UnicodeDecodeError:
        raise MPQError(f"--prompts {src} is not UTF-8 text; give one prompt per line") from None
    except OSError as e:
        raise MPQError(f"cannot read --prompts {src}: {e.strerror}") from None
    prompts = tuple(p for p in lines if p and not p.startswith("#"))
    if not prompts:
        raise MPQError(f"--prompts {src} holds no prompts; give one prompt per line")
    long = [i for i, p in enumerate(prompts) if len(p) > MAX_PROMPT_CHARS]
    if long:
        raise MPQError(f"prompt {long[0] + 1} in {src} is {len(prompts[long[0]])} characters long; the text encoder "
                       f"reads at most a few hundred (split the file into one prompt per line)")
    return PromptSet(prompts, "the bundled prompt set" if path is None else os.path.abspath(path))


def _folder_sha(folder: str, memo_dir: str | None) -> str:
    from mpq_export.calibrate import file_sha256

    h = hashlib.sha256()
    for root, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            p = os.path.join(root, name)
            h.update(os.path.relpath(p, folder).encode())
            h.update(file_sha256(p, memo_dir).encode())
    return h.hexdigest()


def _load_encoder(pipe: PipelineFolder):
    try:
        import torch  # noqa: F401
        import transformers
    except ImportError:
        raise MPQError("encoding prompts needs torch and transformers: pip install 'mpq-export[torch]'") from None
    quiet_hf_libraries()
    with open(os.path.join(pipe.root, MODEL_INDEX)) as f:
        index = json.load(f)
    enc_cls = index.get("text_encoder", [None, "CLIPTextModel"])[1]
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(pipe.tokenizer_dir)
        encoder = getattr(transformers, str(enc_cls)).from_pretrained(pipe.text_encoder_dir).eval().float()
    except Exception as e:
        raise MPQError(f"transformers cannot load the text encoder / tokenizer of {pipe.root}: "
                       f"{str(e).splitlines()[0][:200]}") from None
    return tokenizer, encoder


def _encode(tokenizer, encoder, prompts: list[str]) -> np.ndarray:
    """Last hidden state of each prompt padded to the tokenizer's length, as diffusers' SD pipelines do."""
    import torch

    length = min(int(getattr(tokenizer, "model_max_length", 77) or 77), 4096)
    use_mask = bool(getattr(encoder.config, "use_attention_mask", False))
    out = []
    with torch.no_grad():
        for i in range(0, len(prompts), ENCODE_BATCH):
            tok = tokenizer(prompts[i: i + ENCODE_BATCH], padding="max_length", max_length=length, truncation=True,
                            return_tensors="pt")
            mask = tok.attention_mask if use_mask else None
            out.append(encoder(tok.input_ids, attention_mask=mask)[0].float().numpy())
    return np.concatenate(out)


def encode_prompts(pipe: PipelineFolder, prompts: PromptSet, out_dir: str, memo_dir: str | None = None) -> PromptEmbeddings:
    """Encode the prompts and the empty prompt once; reuse the .npz in out_dir when nothing changed."""
    if pipe.text_encoder_dir is None or pipe.tokenizer_dir is None:
        raise MPQError(f"pipeline folder {pipe.root} has no text_encoder/ or tokenizer/ to encode prompts with; give "
                       f"precomputed embeddings with --calib-data FILE.npz (encoder_hidden_states and "
                       f"uncond_encoder_hidden_states)")
    h = hashlib.sha256()
    for part in (_folder_sha(pipe.text_encoder_dir, memo_dir), _folder_sha(pipe.tokenizer_dir, memo_dir),
                 json.dumps(list(prompts.prompts)), pipe.class_name, "v1"):
        h.update(part.encode())
    path = os.path.join(out_dir, f"prompts-{h.hexdigest()[:24]}.npz")
    if os.path.exists(path):
        try:
            with np.load(path, allow_pickle=False) as z:
                desc = str(z[SOURCE_KEY])
                n = int(z["encoder_hidden_states"].shape[0])
            log.info("[prompts] reusing encoded prompts %s", path)
            return PromptEmbeddings(path, n, desc.split("encoded by ")[-1].split(" ")[0], desc)
        except Exception as e:  # damaged: encode again
            log.warning("[prompts] ignoring unreadable %s (%s)", path, e)
    tokenizer, encoder = _load_encoder(pipe)
    log.info("[prompts] encoding %d prompts with %s (%s)", len(prompts.prompts), pipe.text_encoder_dir,
             type(encoder).__name__)
    cond = _encode(tokenizer, encoder, list(prompts.prompts))
    uncond = _encode(tokenizer, encoder, [""])
    desc = (f"{len(prompts.prompts)} prompts from {prompts.source}, encoded by {type(encoder).__name__} "
            f"({pipe.text_encoder_dir}); unconditional branch: the empty prompt")
    os.makedirs(out_dir, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}.npz"
    try:
        np.savez(tmp, encoder_hidden_states=cond.astype(np.float32), uncond_encoder_hidden_states=uncond.astype(np.float32),
                 **{SOURCE_KEY: np.array(desc)})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return PromptEmbeddings(path, len(prompts.prompts), type(encoder).__name__, desc)


def decode_latents(vae_dir: str, latents: np.ndarray) -> np.ndarray:
    """Images in [-1, 1], [n, 3, H, W], from final latents with the pipeline's VAE (as its decode step)."""
    import torch
    from diffusers import AutoencoderKL

    quiet_hf_libraries()
    vae = AutoencoderKL.from_pretrained(vae_dir).eval().float()
    scale = float(getattr(vae.config, "scaling_factor", 0.18215) or 0.18215)
    with torch.no_grad():
        out = [vae.decode(torch.from_numpy(latents[i: i + 4].astype(np.float32)) / scale).sample.numpy()
               for i in range(0, len(latents), 4)]
    return np.clip(np.concatenate(out), -1, 1)
