#!/usr/bin/env python3
"""Random-weight diffusers denoiser folders of real architectures, for reproducing size and memory figures.

    python tools/make_unet.py {sd15,sd15-mini,sd21,sdxl,tiny,tiny-xl} OUT_DIR [--seed 0] [--pipeline]
    python tools/make_unet.py {sd3-medium,tiny-sd3,pixart-alpha,tiny-pixart,flux-dev-reduced,tiny-flux} OUT_DIR [--seed 0] [--pipeline]

Writes OUT_DIR/unet (or OUT_DIR/transformer for the transformer denoisers; config.json + safetensors,
FP32) and OUT_DIR/scheduler/scheduler_config.json (flow matching with SD3's shift 3 for SD3);
with --pipeline a whole diffusers text-to-image pipeline folder (model_index.json, a CLIP text encoder
of the architecture's size with a hand-written tokenizer vocabulary, an AutoencoderKL; for tiny-sd3
tiny-flux and tiny-pixart their pipelines' CLIP and T5 encoders, the T5 tokenizer a hand-written
Unigram one), as
`mpq-export PIPELINE_DIR` takes it.
The weights are random (no model hub is reachable here): good for sizes, memory and speed, not for
quality. It prints the parameter count; FP32 weights take 4 bytes each on disk and at least as much
RAM while the folder is built (SDXL's 2.6 B parameters want well over 24 GiB).
"""

from __future__ import annotations

import argparse
import json
import os

CONFIGS = {
    # Stable Diffusion 1.5's UNet (runwayml/stable-diffusion-v1-5, unet/config.json)
    "sd15": dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3),
    # Stable Diffusion 2.1 (768-v): linear projections, head dim 64, OpenCLIP-H context
    "sd21": dict(sample_size=96, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=1024,
                 attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3),
    # SDXL base: 3 levels, transformer depths 1/2/10, text_time additional embeddings
    "sdxl": dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280), cross_attention_dim=2048, attention_head_dim=(5, 10, 20),
                 transformer_layers_per_block=(1, 2, 10), use_linear_projection=True,
                 addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")),
    # SD 1.5's layout (blocks, attention, cross-attention) at a fifth of its width: 35 M parameters,
    # small enough to benchmark on a 2-core machine in minutes (tools/bench_ort.py)
    "sd15-mini": dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                      block_out_channels=(64, 128, 256, 256), cross_attention_dim=768, attention_head_dim=8,
                      norm_num_groups=32,
                      down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                      up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3),
    # the tests' SDXL-style UNet: text_time additional embeddings (pooled text 16 + 6 time ids x 8)
    "tiny-xl": dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
                    cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8, addition_embed_type="text_time",
                    addition_time_embed_dim=8, projection_class_embeddings_input_dim=64,
                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D")),
    "tiny": dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
                 cross_attention_dim=16, attention_head_dim=4, norm_num_groups=8,
                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")),
}
SCHEDULER = {"_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085,
             "beta_end": 0.012, "beta_schedule": "scaled_linear", "prediction_type": "epsilon",
             "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}


# The text encoder and VAE of a pipeline folder (--pipeline): SD 1.5's CLIP ViT-L/14 text tower and
# its AutoencoderKL for the real architectures; small ones for "tiny" (the tests)
TEXT_ENCODERS = {"sd15": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                              hidden_act="quick_gelu"),
                 "sd21": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
                              hidden_act="gelu"),
                 "sd15-mini": dict(hidden_size=768, intermediate_size=1536, num_hidden_layers=2, num_attention_heads=12),
                 "tiny": dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2),
                 "sdxl": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                              hidden_act="quick_gelu"),
                 "tiny-xl": dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2)}
# SDXL's second, projecting text encoder (OpenCLIP ViT-bigG/14 for the real one)
TEXT_ENCODERS_2 = {"sdxl": dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                                hidden_act="gelu", projection_dim=1280),
                   "tiny-xl": dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                                   projection_dim=16)}
VAES = {"sd15": dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=512),
        "sd21": dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=768),
        "sd15-mini": dict(block_out_channels=(32, 64, 64, 64), layers_per_block=1, norm_num_groups=32, sample_size=256),
        "tiny": dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=8, sample_size=16),
        "sdxl": dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=1024),
        "tiny-xl": dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=8, sample_size=16)}
TOKENS = 77


def write_tokenizer(folder: str, max_length: int = TOKENS) -> int:
    """A CLIP tokenizer with a hand-written byte-level vocabulary (every byte, alone and word-final, and
    a few hundred merges of frequent English pairs): no model hub needed. Returns the vocabulary size."""
    from transformers import CLIPTokenizer

    # GPT-2 / CLIP byte-level alphabet: printable bytes map to themselves, the rest to code points 256+
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    chars = [chr(b) if b in printable else chr(next(extra)) for b in range(256)]
    vocab = chars + [c + "</w>" for c in chars]
    merges = []
    for a in "etaoinshrdlcumwfgypbvk":
        for b in "etaoinshrdlcu":
            merges.append(f"{a} {b}</w>")
            vocab.append(f"{a}{b}</w>")
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump({t: i for i, t in enumerate(vocab)}, f)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = CLIPTokenizer(vocab=os.path.join(folder, "vocab.json"), merges=os.path.join(folder, "merges.txt"),
                        model_max_length=max_length)
    tok.save_pretrained(folder)
    return len(vocab)


def make_pipeline(arch: str, out_dir: str, unet) -> None:
    """unet/ is written by the caller; add text_encoder/, tokenizer/, vae/ and model_index.json."""
    import torch
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    from transformers import CLIPTextModelWithProjection

    def text_config(**kw):
        return CLIPTextConfig(vocab_size=n_vocab, max_position_embeddings=TOKENS, bos_token_id=n_vocab - 2,
                              eos_token_id=n_vocab - 1, pad_token_id=n_vocab - 1, **kw)

    n_vocab = write_tokenizer(os.path.join(out_dir, "tokenizer"))
    cfg = text_config(**TEXT_ENCODERS[arch])
    xl = arch in TEXT_ENCODERS_2
    width = cfg.hidden_size + (TEXT_ENCODERS_2[arch]["hidden_size"] if xl else 0)
    assert width == unet.config.cross_attention_dim, "text encoder width must match cross-attention"
    torch.manual_seed(1)
    CLIPTextModel(cfg).eval().save_pretrained(os.path.join(out_dir, "text_encoder"))
    if xl:
        write_tokenizer(os.path.join(out_dir, "tokenizer_2"))
        CLIPTextModelWithProjection(text_config(**TEXT_ENCODERS_2[arch])).eval().save_pretrained(
            os.path.join(out_dir, "text_encoder_2"))
    vae_cfg = VAES[arch]
    n = len(vae_cfg["block_out_channels"])
    AutoencoderKL(in_channels=3, out_channels=3, latent_channels=unet.config.in_channels,
                  down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                  **vae_cfg).eval().save_pretrained(os.path.join(out_dir, "vae"))
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.30.0",
             "unet": ["diffusers", "UNet2DConditionModel"], "scheduler": ["diffusers", "DDIMScheduler"],
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
             "vae": ["diffusers", "AutoencoderKL"], "safety_checker": [None, None], "feature_extractor": [None, None],
             "requires_safety_checker": False}
    if xl:
        index = {"_class_name": "StableDiffusionXLPipeline", "_diffusers_version": "0.30.0",
                 **{k: index[k] for k in ("unet", "scheduler", "text_encoder", "tokenizer", "vae")},
                 "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
                 "tokenizer_2": ["transformers", "CLIPTokenizer"], "force_zeros_for_empty_prompt": True}
    with open(os.path.join(out_dir, "model_index.json"), "w") as f:
        json.dump(index, f, indent=1)


# Transformer denoisers: SD3-medium's MMDiT (stabilityai/stable-diffusion-3-medium-diffusers,
# transformer/config.json: 2 B parameters) and PixArt-alpha 512's DiT, and tiny ones for the tests, sized
# so that their blocks (not the pinned embedders) hold most weights, as in the real models
TRANSFORMERS = {
    "sd3-medium": ("SD3Transformer2DModel", dict(sample_size=128, patch_size=2, in_channels=16, num_layers=24,
                                                 attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                                                 caption_projection_dim=1536, pooled_projection_dim=2048,
                                                 out_channels=16, pos_embed_max_size=192)),
    "tiny-sd3": ("SD3Transformer2DModel", dict(sample_size=16, patch_size=2, in_channels=4, num_layers=2,
                                               attention_head_dim=16, num_attention_heads=4, joint_attention_dim=32,
                                               caption_projection_dim=64, pooled_projection_dim=32, out_channels=4,
                                               pos_embed_max_size=16)),
    "pixart-alpha": ("PixArtTransformer2DModel", dict(num_attention_heads=16, attention_head_dim=72, in_channels=4,
                                                      out_channels=8, num_layers=28, cross_attention_dim=1152,
                                                      sample_size=64, patch_size=2, caption_channels=4096)),
    "tiny-pixart": ("PixArtTransformer2DModel", dict(num_attention_heads=4, attention_head_dim=32, in_channels=4,
                                                     out_channels=8, num_layers=3, cross_attention_dim=128,
                                                     sample_size=16, patch_size=2, caption_channels=32)),
    # FLUX.1-dev (black-forest-labs/FLUX.1-dev, transformer/config.json): 12 B parameters, 48 GB in FP32,
    # beyond a 24 GB machine (tools/budget_ranges.py builds it on the meta device)
    "flux-dev": ("FluxTransformer2DModel", dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38,
                                                attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                                                pooled_projection_dim=768, guidance_embeds=True,
                                                axes_dims_rope=(16, 56, 56))),
    # FLUX.1-dev's width, embedders and blocks at reduced depth (2 double-, 4 single-stream blocks of its
    # 19 and 38): 1.31 B parameters, the scale run's Flux-shaped model
    "flux-dev-reduced": ("FluxTransformer2DModel", dict(patch_size=1, in_channels=64, num_layers=2, num_single_layers=4,
                                                        attention_head_dim=128, num_attention_heads=24,
                                                        joint_attention_dim=4096, pooled_projection_dim=768,
                                                        guidance_embeds=True, axes_dims_rope=(16, 56, 56))),
    # Flux-dev's double- and single-stream blocks with the guidance embedder, at reduced depth
    "tiny-flux": ("FluxTransformer2DModel", dict(patch_size=1, in_channels=16, num_layers=2, num_single_layers=4,
                                                 attention_head_dim=16, num_attention_heads=4, joint_attention_dim=32,
                                                 pooled_projection_dim=32, guidance_embeds=True,
                                                 axes_dims_rope=(4, 6, 6))),
}
# a sample size the denoiser's own config does not hold (Flux's): written into config.json for mpq-export
TRANSFORMER_SAMPLE_SIZE = {"tiny-flux": 16, "flux-dev-reduced": 128}  # 128: FLUX.1-dev's 1024 px latent
PIPELINE_TRANSFORMERS = ("tiny-sd3", "tiny-flux", "tiny-pixart")  # --pipeline: a whole pipeline folder
# diffusers' scheduler configs of those pipelines: flow matching with shift 3 (SD3), DPM-Solver's
# DDPM training schedule (PixArt; sampled here with DDIM)
TRANSFORMER_SCHEDULERS = {
    "SD3Transformer2DModel": dict(_class_name="FlowMatchEulerDiscreteScheduler", num_train_timesteps=1000, shift=3.0),
    "FluxTransformer2DModel": dict(_class_name="FlowMatchEulerDiscreteScheduler", num_train_timesteps=1000,
                                   shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                   base_image_seq_len=256, max_image_seq_len=4096),
    "PixArtTransformer2DModel": dict(_class_name="DPMSolverMultistepScheduler", num_train_timesteps=1000,
                                     beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                                     prediction_type="epsilon", clip_sample=False),
}


def write_t5_tokenizer(folder: str) -> int:
    """A T5 tokenizer (fast, tokenizer.json) over a small word vocabulary, written without a model hub:
    whitespace words, unknown ones to <unk>, </s> appended as T5 does. Returns the vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    # T5's own form: a Unigram model over "\u2581"-prefixed pieces (sentencepiece's word boundary), with
    # every lowercase letter as a fallback piece
    words = sorted({w for w in ("a photo of an the in on with and cat dog horse astronaut riding painting city "
                                "street night red blue green portrait landscape mountain river forest beach house "
                                "car flower tree sky").split()})
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("\u2581" + w, -2.0) for w in words] + \
        [("\u2581", -3.0)] + [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    words = pieces
    T5TokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", extra_ids=0,
                    model_max_length=512).save_pretrained(folder)
    return len(words)


def make_transformer_pipeline(arch: str, out_dir: str, model) -> None:
    """transformer/ and scheduler/ are written by the caller; the rest of a StableDiffusion3Pipeline
    (two CLIPs with projection + T5), FluxPipeline (CLIP + T5) or PixArtAlphaPipeline (T5) folder, saved
    by the pipeline class."""
    import diffusers
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    cfg = model.config
    n_vocab = write_tokenizer(os.path.join(out_dir, "tokenizer"))
    n_t5 = write_t5_tokenizer(os.path.join(out_dir, "t5-tokenizer"))

    def clip(cls, hidden, projection=None):
        extra = {"projection_dim": projection} if projection else {}
        return cls(CLIPTextConfig(vocab_size=n_vocab, max_position_embeddings=TOKENS, bos_token_id=n_vocab - 2,
                                  eos_token_id=n_vocab - 1, pad_token_id=n_vocab - 1, hidden_size=hidden,
                                  intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=2,
                                  **extra)).eval()

    torch.manual_seed(1)
    width = cfg.caption_channels if arch == "tiny-pixart" else cfg.joint_attention_dim
    t5 = T5EncoderModel(T5Config(vocab_size=n_t5, d_model=width, d_kv=8, d_ff=64, num_layers=1,
                                 num_heads=4, decoder_start_token_id=0)).eval()
    latent = cfg.in_channels // 4 if arch == "tiny-flux" else cfg.in_channels
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent, block_out_channels=(8, 8),
                                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                                  norm_num_groups=4, layers_per_block=1).eval()
    with open(os.path.join(out_dir, "scheduler", "scheduler_config.json")) as f:
        scheduler = getattr(diffusers, json.load(f)["_class_name"]).from_pretrained(os.path.join(out_dir, "scheduler"))
    from transformers import CLIPTokenizer, T5TokenizerFast

    tok = CLIPTokenizer.from_pretrained(os.path.join(out_dir, "tokenizer"))
    t5_tok = T5TokenizerFast.from_pretrained(os.path.join(out_dir, "t5-tokenizer"))
    if arch == "tiny-pixart":  # T5 alone, its padding masked
        pipe = diffusers.PixArtAlphaPipeline(tokenizer=t5_tok, text_encoder=t5, vae=vae, transformer=model,
                                             scheduler=scheduler)
    elif arch == "tiny-flux":  # CLIP's pooled output is Flux's pooled projection; T5 its text tokens
        pipe = diffusers.FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=clip(CLIPTextModel, cfg.pooled_projection_dim),
                                      tokenizer=tok, text_encoder_2=t5, tokenizer_2=t5_tok, transformer=model)
    else:  # SD3: two projecting CLIPs (their states concatenated and padded to T5's width; pooled concatenated)
        half = cfg.pooled_projection_dim // 2
        pipe = diffusers.StableDiffusion3Pipeline(
            scheduler=scheduler, vae=vae, text_encoder=clip(CLIPTextModelWithProjection, 16, half), tokenizer=tok,
            text_encoder_2=clip(CLIPTextModelWithProjection, 16, half), tokenizer_2=tok, text_encoder_3=t5,
            tokenizer_3=t5_tok, transformer=model)
    pipe.save_pretrained(out_dir)
    import shutil

    shutil.rmtree(os.path.join(out_dir, "t5-tokenizer"))


def make_transformer(arch: str, out_dir: str, seed: int = 0, pipeline: bool = False) -> int:
    """OUT_DIR/transformer and OUT_DIR/scheduler; returns the parameter count."""
    import torch
    import diffusers

    cls_name, cfg = TRANSFORMERS[arch]
    torch.manual_seed(seed)
    model = getattr(diffusers, cls_name)(**cfg).eval()
    if pipeline:
        if arch not in PIPELINE_TRANSFORMERS:
            raise SystemExit(f"--pipeline is available for {', '.join(PIPELINE_TRANSFORMERS)}, not {arch}")
        os.makedirs(os.path.join(out_dir, "scheduler"), exist_ok=True)
        with open(os.path.join(out_dir, "scheduler", "scheduler_config.json"), "w") as f:
            json.dump(TRANSFORMER_SCHEDULERS[cls_name], f, indent=1)
        make_transformer_pipeline(arch, out_dir, model)
    model.save_pretrained(os.path.join(out_dir, "transformer"))
    if arch in TRANSFORMER_SAMPLE_SIZE:
        path = os.path.join(out_dir, "transformer", "config.json")
        with open(path) as f:
            config = json.load(f)
        with open(path, "w") as f:
            json.dump({**config, "sample_size": TRANSFORMER_SAMPLE_SIZE[arch]}, f, indent=2)
    os.makedirs(os.path.join(out_dir, "scheduler"), exist_ok=True)
    with open(os.path.join(out_dir, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump(TRANSFORMER_SCHEDULERS[cls_name], f, indent=1)
    return sum(p.numel() for p in model.parameters())


def make(arch: str, out_dir: str, seed: int = 0, pipeline: bool = False) -> int:
    """Write the folder; returns the denoiser's parameter count."""
    import torch
    from diffusers import UNet2DConditionModel

    if arch in TRANSFORMERS:
        return make_transformer(arch, out_dir, seed, pipeline)

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**CONFIGS[arch]).eval()
    unet.save_pretrained(os.path.join(out_dir, "unet"))
    os.makedirs(os.path.join(out_dir, "scheduler"), exist_ok=True)
    sched = dict(SCHEDULER, prediction_type="v_prediction") if arch == "sd21" else SCHEDULER
    with open(os.path.join(out_dir, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump(dict(sched, _class_name="DDIMScheduler"), f, indent=1)
    if pipeline:
        if arch not in TEXT_ENCODERS:
            raise SystemExit(f"--pipeline is not available for {arch}")
        make_pipeline(arch, out_dir, unet)
    return sum(p.numel() for p in unet.parameters())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("arch", choices=sorted(CONFIGS) + sorted(TRANSFORMERS))
    ap.add_argument("out_dir")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pipeline", action="store_true",
                    help="write a whole text-to-image pipeline folder (text_encoder/, tokenizer/, vae/, model_index.json)")
    args = ap.parse_args()
    n = make(args.arch, args.out_dir, args.seed, args.pipeline)
    if args.pipeline:
        with open(os.path.join(args.out_dir, "model_index.json")) as f:
            kind = json.load(f)["_class_name"]
        budget = 4.5 if args.arch in TRANSFORMERS else 8
        print(f"{args.out_dir}: random-weight {args.arch} {kind} folder, denoiser {n / 1e6:.1f} M parameters; "
              f"quantize it with: mpq-export {args.out_dir} --budget {budget:g}")
    elif args.arch in TRANSFORMERS:
        print(f"{args.out_dir}/transformer: random-weight {args.arch} {TRANSFORMERS[args.arch][0]}, {n / 1e6:.1f} M "
              f"parameters; quantize it with: mpq-export {args.out_dir}/transformer --budget 4.5")
    else:
        print(f"{args.out_dir}/unet: random-weight {args.arch} UNet2DConditionModel, {n / 1e6:.1f} M parameters; "
              f"quantize it with: mpq-export {args.out_dir}/unet --budget 8 --resolution 32 --seq-len 77")


if __name__ == "__main__":
    main()
