#!/usr/bin/env python3
"""Random-weight diffusers UNet folders of real architectures, for reproducing size and memory figures.

    python tools/make_unet.py {sd15,sd15-mini,sd21,sdxl,tiny} OUT_DIR [--seed 0]

Writes OUT_DIR/unet (config.json + safetensors, FP32) and OUT_DIR/scheduler/scheduler_config.json.
The weights are random (no model hub is reachable here): good for sizes, memory and speed, not for
quality. It prints the parameter count; FP32 weights take 4 bytes each on disk and at least as much
RAM while the folder is built (SDXL's 2.6 B parameters need more than this 24 GiB machine offers
comfortably).
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
    "tiny": dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
                 cross_attention_dim=16, attention_head_dim=4, norm_num_groups=8,
                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")),
}
SCHEDULER = {"_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085,
             "beta_end": 0.012, "beta_schedule": "scaled_linear", "prediction_type": "epsilon",
             "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}


def make(arch: str, out_dir: str, seed: int = 0) -> int:
    """Write the folder; returns the parameter count."""
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**CONFIGS[arch]).eval()
    unet.save_pretrained(os.path.join(out_dir, "unet"))
    os.makedirs(os.path.join(out_dir, "scheduler"), exist_ok=True)
    sched = dict(SCHEDULER, prediction_type="v_prediction") if arch == "sd21" else SCHEDULER
    with open(os.path.join(out_dir, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump(sched, f, indent=1)
    return sum(p.numel() for p in unet.parameters())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("arch", choices=sorted(CONFIGS))
    ap.add_argument("out_dir")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    n = make(args.arch, args.out_dir, args.seed)
    print(f"{args.out_dir}/unet: random-weight {args.arch} UNet2DConditionModel, {n / 1e6:.1f} M parameters; "
          f"quantize it with: mpq-export {args.out_dir}/unet --budget 8 --resolution 32 --seq-len 77")


if __name__ == "__main__":
    main()
