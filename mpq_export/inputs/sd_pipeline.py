"""A diffusers text-to-image pipeline folder: its parts, its prompts encoded, its latents decoded.

A Stable Diffusion user holds a pipeline folder (model_index.json, unet/, scheduler/, text_encoder/,
tokenizer/, vae/), and the UNet in it runs under classifier-free guidance on text embeddings. The
prepare step takes unet/ and scheduler/ from the folder and encodes a prompt set once with the folder's
own tokenizer and text encoder, as the pipeline would (padded to the tokenizer's length, last hidden
state), together with the empty prompt for the unconditional branch. The embeddings are written as an
.npz that calibration and validation read like --calib-data (`encoder_hidden_states`,
`uncond_encoder_hidden_states`), cached by the content of the encoder, the tokenizer and the prompts.
SDXL folders (text_encoder_2/, tokenizer_2/) are encoded as diffusers' SDXL pipeline does: the
penultimate hidden states of both encoders concatenated, the second encoder's pooled projection as
`text_embeds`, `time_ids` from the image size, and zeros for the unconditional branch when the
folder sets force_zeros_for_empty_prompt. When the folder has a vae/, validation's final latents
are decoded for samples.png.

torch, transformers and diffusers are imported here only, lazily (extra `[torch]`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import numpy as np

from mpq_export.util.errors import MPQError
from mpq_export.inputs.export import quiet_hf_libraries
from mpq_export.util.files import read_json_object
from mpq_export.util.progress import log
from mpq_export.inputs.conditioning import DESCRIPTION_KEY as SOURCE_KEY
from mpq_export.util.cache import write_entry

ENCODER_KEY = "mpq_export_encoder"  # the text encoder's class name(s), for the report
IDENTITY_KEY = "mpq_export_identity"  # the hash of what the entry was encoded from, compared on reuse

MODEL_INDEX = "model_index.json"
DEFAULT_PROMPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "calib_data", "prompts.txt")
# diffusers' own defaults for its pipelines' guidance_scale
GUIDANCE_DEFAULTS = {"StableDiffusionXLPipeline": 5.0, "StableDiffusion3Pipeline": 7.0, "PixArtAlphaPipeline": 4.5,
                     "PixArtSigmaPipeline": 4.5,
                     # Flux-dev's guidance is distilled into an input (3.5): one row per sample, no CFG
                     "FluxPipeline": 1.0}
# transformer pipelines whose prompts are encoded by the pipeline class's own encode_prompt
ENCODED_BY_PIPELINE = ("StableDiffusion3Pipeline", "FluxPipeline", "PixArtAlphaPipeline", "PixArtSigmaPipeline")
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
    text_encoder_2_dir: str | None = None  # SDXL: the second (projecting) text encoder; SD3's second CLIP, Flux's T5
    tokenizer_2_dir: str | None = None
    force_zeros_for_empty_prompt: bool = False  # SDXL: the unconditional branch is all zeros
    text_encoder_3_dir: str | None = None  # SD3's T5
    tokenizer_3_dir: str | None = None
    transformer: bool = False  # the denoiser is transformer/ (SD3, Flux), not unet/

    @property
    def default_guidance(self) -> float:
        return GUIDANCE_DEFAULTS.get(self.class_name, DEFAULT_GUIDANCE)

    @property
    def sdxl(self) -> bool:
        return self.text_encoder_2_dir is not None and not self.transformer

    def vae_scale_factor(self) -> int:
        """Pixels per latent pixel: 2 ** (VAE levels - 1), as diffusers computes it (8 for SD)."""
        try:
            with open(os.path.join(self.vae_dir, "config.json")) as f:
                return 2 ** (len(json.load(f)["block_out_channels"]) - 1)
        except (TypeError, OSError, ValueError, KeyError):
            return 8


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
    """The part's folder when model_index.json enables it (a [library, class] entry, not [null, null]: the
    pipeline runs without that part, whatever the folder holds) and its file is there."""
    d = os.path.join(os.path.abspath(root), name)
    entry = index.get(name)
    if isinstance(entry, list) and len(entry) == 2 and entry[1] and os.path.isfile(os.path.join(d, required_file)):
        return d
    return None


def read_pipeline(path: str) -> PipelineFolder:
    """The parts of a diffusers pipeline folder, or a one-line error naming what is missing."""
    index = read_json_object(os.path.join(path, MODEL_INDEX), "a diffusers pipeline folder")
    cls = str(index.get("_class_name", ""))
    unet = os.path.join(path, "unet")
    transformer = not os.path.isfile(os.path.join(unet, "config.json")) and \
        os.path.isfile(os.path.join(path, "transformer", "config.json"))
    if transformer:
        unet = os.path.join(path, "transformer")
    elif not os.path.isfile(os.path.join(unet, "config.json")):
        raise MPQError(f"pipeline folder {path} has no unet/config.json (nor transformer/config.json); give a "
                       f"complete pipeline saved with save_pretrained")
    sched = os.path.join(path, "scheduler", "scheduler_config.json")
    return PipelineFolder(root=os.path.abspath(path), class_name=cls, unet_dir=unet,
                          scheduler_config=sched if os.path.isfile(sched) else None,
                          text_encoder_dir=_part(path, index, "text_encoder", "config.json"),
                          tokenizer_dir=_part(path, index, "tokenizer", "tokenizer_config.json"),
                          vae_dir=_part(path, index, "vae", "config.json"),
                          text_encoder_2_dir=_part(path, index, "text_encoder_2", "config.json"),
                          tokenizer_2_dir=_part(path, index, "tokenizer_2", "tokenizer_config.json"),
                          force_zeros_for_empty_prompt=bool(index.get("force_zeros_for_empty_prompt", False)),
                          text_encoder_3_dir=_part(path, index, "text_encoder_3", "config.json"),
                          tokenizer_3_dir=_part(path, index, "tokenizer_3", "tokenizer_config.json"),
                          transformer=transformer)


def check_pipeline(pipe: PipelineFolder, denoiser_class: str | None, denoisers: dict[str, str], encode: bool) -> None:
    """One-line errors, before any export or encoding, for a pipeline folder that cannot run as it says: a
    model_index.json naming another pipeline than the denoiser's, a component it lists that is missing, text
    encoders or a VAE whose weight files are cut short, a tokenizer that cannot encode text (`encode`: the
    prompts will be encoded)."""
    with open(os.path.join(pipe.root, MODEL_INDEX)) as f:
        index = json.load(f)
    want = denoisers.get(pipe.class_name)
    if want is not None and denoiser_class is not None and want != denoiser_class:
        part = "transformer/" if pipe.transformer else "unet/"
        raise MPQError(f"{pipe.root}/model_index.json names {pipe.class_name}, which runs a {want}, but {part} holds a "
                       f"{denoiser_class}; give the model_index.json saved with this pipeline")
    for name, entry in sorted(index.items()):
        if name.startswith("_") or not isinstance(entry, list) or len(entry) != 2 or entry[1] is None:
            continue
        folder = os.path.join(pipe.root, name)
        if not os.path.isdir(folder) or not any(f.endswith(".json") for f in os.listdir(folder)):
            raise MPQError(f"{pipe.root}/model_index.json lists {name} ({entry[1]}), but {folder} is missing or has no "
                           f"config; copy the whole pipeline folder again")
    for part, label in (("text_encoder", "text encoder"), ("text_encoder_2", "text_encoder_2"),
                        ("text_encoder_3", "text_encoder_3"), ("vae", "VAE")):
        folder = getattr(pipe, f"{part}_dir", None)
        if folder is not None:
            check_weight_files(folder, f"the pipeline's {label}")
    if encode:
        for part in ("tokenizer", "tokenizer_2", "tokenizer_3"):
            folder = getattr(pipe, f"{part}_dir")
            if folder is not None:
                check_tokenizer(folder, part)


PROBE_TEXT = "a photo of a cat"


def check_tokenizer(folder: str, part: str) -> None:
    """A tokenizer that cannot encode plain English is damaged (a vocabulary file lost, say): transformers then
    loads it with a handful of entries and every word becomes the unknown token, silently."""
    try:
        import transformers
    except ImportError:
        raise MPQError("encoding prompts needs torch and transformers: pip install 'mpq-export[torch]'") from None
    quiet_hf_libraries()
    try:
        tok = transformers.AutoTokenizer.from_pretrained(folder)
        ids = tok(PROBE_TEXT, add_special_tokens=False)["input_ids"]
    except Exception as e:
        raise MPQError(f"the pipeline's {part} at {folder} cannot be loaded ({str(e).splitlines()[0][:160]}); copy "
                       f"it again") from None
    unknown = getattr(tok, "unk_token_id", None)
    if not ids or len(tok) < 16 or (unknown is not None and all(i == unknown for i in ids)):
        raise MPQError(f"the pipeline's {part} at {folder} cannot encode text (a vocabulary of {len(tok)} entries "
                       f"turns '{PROBE_TEXT}' into {len(ids)} unknown tokens): its vocabulary files are damaged or "
                       f"missing; copy {part}/ again")


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


def folder_sha(folder: str, memo_dir: str | None) -> str:
    from mpq_export.util.cache import file_sha256

    h = hashlib.sha256()
    for root, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            p = os.path.join(root, name)
            h.update(os.path.relpath(p, folder).encode())
            h.update(file_sha256(p, memo_dir).encode())
    return h.hexdigest()


def _load_encoder(pipe: PipelineFolder, part: str = ""):
    """(tokenizer, text encoder) of the folder; part "_2" is SDXL's second pair."""
    try:
        import torch  # noqa: F401
        import transformers
    except ImportError:
        raise MPQError("encoding prompts needs torch and transformers: pip install 'mpq-export[torch]'") from None
    quiet_hf_libraries()
    with open(os.path.join(pipe.root, MODEL_INDEX)) as f:
        index = json.load(f)
    default = "CLIPTextModelWithProjection" if part else "CLIPTextModel"
    enc_cls = (index.get(f"text_encoder{part}") or [None, default])[1] or default
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(getattr(pipe, f"tokenizer{part}_dir"))
        encoder = getattr(transformers, str(enc_cls)).from_pretrained(getattr(pipe, f"text_encoder{part}_dir"))
    except Exception as e:
        raise MPQError(f"transformers cannot load text_encoder{part} / tokenizer{part} of {pipe.root}: "
                       f"{str(e).splitlines()[0][:200]}") from None
    return tokenizer, encoder.eval().float()


def _encode(tokenizer, encoder, prompts: list[str], penultimate: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(hidden states, pooled output) of each prompt padded to the tokenizer's length, as diffusers'
    pipelines encode: SD takes the last hidden state; SDXL the penultimate one (`penultimate`) and the
    second encoder's projected pooled embedding."""
    import torch

    length = min(int(getattr(tokenizer, "model_max_length", 77) or 77), 4096)
    use_mask = bool(getattr(encoder.config, "use_attention_mask", False))
    hidden, pooled = [], []
    with torch.no_grad():
        for i in range(0, len(prompts), ENCODE_BATCH):
            tok = tokenizer(prompts[i: i + ENCODE_BATCH], padding="max_length", max_length=length, truncation=True,
                            return_tensors="pt")
            mask = tok.attention_mask if use_mask else None
            out = encoder(tok.input_ids, attention_mask=mask, output_hidden_states=penultimate)
            hidden.append((out.hidden_states[-2] if penultimate else out[0]).float().numpy())
            pooled.append(out[0].float().numpy())
    return np.concatenate(hidden), np.concatenate(pooled)


def _encode_with_pipeline(pipe: PipelineFolder, prompts: list[str]) -> tuple[dict, str]:
    """SD3's and Flux's conditioning, by the diffusers pipeline class's own encode_prompt (its CLIP and T5
    encoders, padding and concatenation), loaded without the denoiser and the VAE."""
    import diffusers
    import torch

    from mpq_export.inputs.export import FLUX_DEFAULT_GUIDANCE

    quiet_hf_libraries()
    cls = getattr(diffusers, pipe.class_name)
    with open(os.path.join(pipe.root, MODEL_INDEX)) as f:  # parts model_index.json disables: passed as None
        disabled = {k: None for k, v in json.load(f).items()
                    if not k.startswith("_") and isinstance(v, list) and len(v) == 2 and v[1] is None}
    try:
        p = cls.from_pretrained(pipe.root, **{**disabled, "transformer": None, "vae": None})
    except Exception as e:  # check_pipeline caught what the files show; this is what only loading shows
        raise MPQError(f"diffusers cannot load the text encoders of {pipe.root} as a {pipe.class_name}: "
                       f"{str(e).splitlines()[0][:200]}; copy the pipeline folder again") from None
    if disabled.get("text_encoder_3", 0) is None:  # SD3 without T5: encode_prompt sizes T5's zeros from the
        import types  # denoiser's config, which is all it reads of the (unloaded) transformer

        with open(os.path.join(pipe.unet_dir, "config.json")) as f:
            object.__setattr__(p, "transformer", types.SimpleNamespace(config=types.SimpleNamespace(**json.load(f))))
    cond, pooled = [], []
    with torch.no_grad():
        for i in range(0, len(prompts), ENCODE_BATCH):
            batch = prompts[i: i + ENCODE_BATCH]
            if pipe.class_name == "FluxPipeline":
                e, pp, _ = p.encode_prompt(prompt=batch, prompt_2=None)
            elif pipe.class_name.startswith("PixArt"):  # T5 only; pp: its attention mask (1 keep, 0 padding)
                e, pp, _, _ = p.encode_prompt(prompt=batch, do_classifier_free_guidance=False)
            else:
                e, _, pp, _ = p.encode_prompt(prompt=batch, prompt_2=None, prompt_3=None,
                                              do_classifier_free_guidance=False)
            cond.append(e.float().numpy())
            pooled.append(pp.float().numpy())
        second = "encoder_attention_mask" if pipe.class_name.startswith("PixArt") else "pooled_projections"
        arrays = {"encoder_hidden_states": np.concatenate(cond), second: np.concatenate(pooled).astype(np.float32)}
        if pipe.class_name == "FluxPipeline":  # the distilled guidance input, at FluxPipeline's default
            arrays["guidance"] = np.full(len(prompts), FLUX_DEFAULT_GUIDANCE, np.float32)
        elif second == "encoder_attention_mask":  # guidance against the encoded empty prompt, masked too
            e, mask, _, _ = p.encode_prompt(prompt=[""], do_classifier_free_guidance=False)
            arrays.update(uncond_encoder_hidden_states=e.float().numpy(),
                          uncond_encoder_attention_mask=mask.float().numpy())
        else:  # SD3 runs classifier-free guidance against the encoded empty prompt
            e, _, pp, _ = p.encode_prompt(prompt=[""], prompt_2=None, prompt_3=None, do_classifier_free_guidance=False)
            arrays.update(uncond_encoder_hidden_states=e.float().numpy(), uncond_pooled_projections=pp.float().numpy())
    encoders = [type(x).__name__ for x in (p.text_encoder, getattr(p, "text_encoder_2", None),
                                           getattr(p, "text_encoder_3", None)) if x is not None]
    return arrays, f"{pipe.class_name}.encode_prompt ({' + '.join(encoders)})"


def _encode_all(pipe: PipelineFolder, prompts: list[str], pixel_size: tuple[int, int]) -> tuple[dict, str]:
    """The UNet's conditioning arrays for the prompts and their uncond_ counterparts; the encoder's name."""
    if pipe.class_name in ENCODED_BY_PIPELINE:
        return _encode_with_pipeline(pipe, prompts)
    tok, enc = _load_encoder(pipe)
    if not pipe.sdxl:
        cond, _ = _encode(tok, enc, prompts)
        uncond, _ = _encode(tok, enc, [""])
        return {"encoder_hidden_states": cond, "uncond_encoder_hidden_states": uncond}, type(enc).__name__
    tok2, enc2 = _load_encoder(pipe, "_2")
    h1, _ = _encode(tok, enc, prompts, penultimate=True)
    h2, pooled = _encode(tok2, enc2, prompts, penultimate=True)
    cond = np.concatenate([h1, h2], axis=-1)
    if pipe.force_zeros_for_empty_prompt:  # SDXL base's default: the unconditional branch is zeros
        uncond, uncond_pooled = np.zeros_like(cond[:1]), np.zeros_like(pooled[:1])
    else:
        u1, _ = _encode(tok, enc, [""], penultimate=True)
        u2, uncond_pooled = _encode(tok2, enc2, [""], penultimate=True)
        uncond = np.concatenate([u1, u2], axis=-1)
    h, w = pixel_size  # original size, crop top-left, target size (diffusers' _get_add_time_ids)
    time_ids = np.array([[h, w, 0, 0, h, w]], dtype=np.float32)
    arrays = {"encoder_hidden_states": cond, "uncond_encoder_hidden_states": uncond, "text_embeds": pooled,
              "uncond_text_embeds": uncond_pooled, "time_ids": time_ids, "uncond_time_ids": time_ids}
    return arrays, f"{type(enc).__name__} + {type(enc2).__name__}"


def encode_prompts(pipe: PipelineFolder, prompts: PromptSet, out_dir: str, memo_dir: str | None = None,
                   pixel_size: tuple[int, int] = (512, 512)) -> PromptEmbeddings:
    """Encode the prompts and the empty prompt once; reuse the .npz in out_dir when nothing changed.
    `pixel_size` (image H, W) goes into SDXL's time_ids."""
    if pipe.text_encoder_dir is None or pipe.tokenizer_dir is None or (
            pipe.sdxl and pipe.tokenizer_2_dir is None):
        raise MPQError(f"pipeline folder {pipe.root} lacks a text encoder or tokenizer to encode prompts with; give "
                       f"precomputed embeddings with --calib-data FILE.npz (encoder_hidden_states and "
                       f"uncond_encoder_hidden_states)")
    h = hashlib.sha256()
    parts = [d for d in (pipe.text_encoder_dir, pipe.tokenizer_dir, pipe.text_encoder_2_dir, pipe.tokenizer_2_dir,
                         pipe.text_encoder_3_dir, pipe.tokenizer_3_dir) if d is not None]
    with open(os.path.join(pipe.root, MODEL_INDEX)) as f:  # which parts the pipeline loads, not only their files
        components = json.dumps({k: v for k, v in json.load(f).items() if not k.startswith("_")}, sort_keys=True)
    for part in [folder_sha(d, memo_dir) for d in parts] + [
            json.dumps(list(prompts.prompts)), pipe.class_name, str(pipe.force_zeros_for_empty_prompt),
            str(tuple(pixel_size)) if pipe.sdxl else "", components, "v3"]:
        h.update(part.encode())
    path = os.path.join(out_dir, f"prompts-{h.hexdigest()[:24]}.npz")
    if os.path.exists(path):
        try:
            with np.load(path, allow_pickle=False) as z:
                desc, encoder = str(z[SOURCE_KEY]), str(z[ENCODER_KEY])
                n = int(z["encoder_hidden_states"].shape[0])
                made_from = str(z[IDENTITY_KEY])
            if made_from == h.hexdigest():
                log.info("[prompts] reusing encoded prompts %s", path)
                return PromptEmbeddings(path, n, encoder, desc)
            log.warning("[prompts] ignoring %s: encoded from other prompts or encoders", path)
        except Exception as e:  # damaged or from an older version: encode again
            log.warning("[prompts] ignoring unreadable %s (%s)", path, e)
    log.info("[prompts] encoding %d prompts with %s", len(prompts.prompts), pipe.text_encoder_dir)
    arrays, encoder = _encode_all(pipe, list(prompts.prompts), pixel_size)
    uncond = "zeros (force_zeros_for_empty_prompt)" if pipe.sdxl and pipe.force_zeros_for_empty_prompt else "the empty prompt"
    if pipe.class_name == "FluxPipeline":
        uncond = "none (Flux's guidance is an input, 3.5)"
    desc = (f"{len(prompts.prompts)} prompts from {prompts.source}, encoded by {encoder} ({pipe.root}); "
            f"unconditional branch: {uncond}" + (f"; SDXL time_ids for {pixel_size[0]}x{pixel_size[1]} images"
                                                 if pipe.sdxl else ""))

    def write(tmp: str) -> None:
        np.savez(tmp, **{k: v.astype(np.float32) for k, v in arrays.items()},
                 **{SOURCE_KEY: np.array(desc), ENCODER_KEY: np.array(encoder), IDENTITY_KEY: np.array(h.hexdigest())})

    if not write_entry(path, write, "encoded prompts", suffix=".npz", quiet=True):
        raise MPQError(f"cannot write the encoded prompts into {out_dir}; free space there or choose --cache-dir")
    return PromptEmbeddings(path, len(prompts.prompts), encoder, desc)


def check_weight_files(folder: str, what: str) -> None:
    """One-line error now, not after calibration, when a part's weight files are cut short: a safetensors
    file must hold every byte its header names, a torch .bin (a zip archive) its central directory.
    Reads headers only."""
    import struct
    import zipfile

    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        problem = None
        if name.endswith(".safetensors"):
            size = os.path.getsize(path)
            try:
                with open(path, "rb") as f:
                    (n,) = struct.unpack("<Q", f.read(8))
                    header = json.loads(f.read(n)) if 0 < n <= size - 8 else None
                end = 8 + n + max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"),
                                  default=0) if isinstance(header, dict) else None
            except (OSError, ValueError, KeyError, TypeError, IndexError, struct.error):
                end = None
            if end is None:
                problem = "has no readable safetensors header"
            elif end > size:
                problem = f"is cut short ({size:,} of {end:,} bytes)"
        elif name.endswith(".bin") and not zipfile.is_zipfile(path):
            problem = "is not a whole torch archive (cut short?)"
        if problem:
            raise MPQError(f"{what} weight file {path} {problem}; copy or download it again")


def decode_latents(vae_dir: str, latents: np.ndarray) -> np.ndarray:
    """Images in [-1, 1], [n, 3, H, W], from final latents with the pipeline's VAE (as its decode step)."""
    import torch
    from diffusers import AutoencoderKL

    quiet_hf_libraries()
    vae = AutoencoderKL.from_pretrained(vae_dir).eval().float()
    scale = float(getattr(vae.config, "scaling_factor", 0.18215) or 0.18215)
    shift = float(getattr(vae.config, "shift_factor", None) or 0.0)  # SD3's and Flux's VAEs
    with torch.no_grad():
        out = [vae.decode(torch.from_numpy(latents[i: i + 4].astype(np.float32)) / scale + shift).sample.numpy()
               for i in range(0, len(latents), 4)]
    return np.clip(np.concatenate(out), -1, 1)
