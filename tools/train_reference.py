#!/usr/bin/env python3
"""Train the bundled reference model: a diffusers UNet2DModel DDPM on scikit-learn's digits.

Offline (the 1,797 8x8 digits ship inside scikit-learn), seeded and deterministic on one machine.
Images are upsampled to 16x16 and scaled to [-1, 1]. Architecture: blocks 32/64/64 with
self-attention at 8x8 and 4x4, cosine noise schedule, epsilon prediction, AdamW 1e-3, batch 64,
EMA 0.995. The EMA weights are saved in FP16 (half the bytes; loaded back as FP32 by diffusers)
to mpq_export/assets/digits_ddpm/{unet,scheduler}/, with train_log.json (time, loss curve).

    python tools/train_reference.py [--steps 1500] [--out mpq_export/assets/digits_ddpm]

Measured on the project's 2-core CPU machine: see train_log.json beside the weights.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time


def digits_16x16():
    import numpy as np
    import torch
    from sklearn.datasets import load_digits

    x = torch.from_numpy(load_digits().images.astype(np.float32) / 16.0)[:, None]  # [1797, 1, 8, 8] in [0, 1]
    x = torch.nn.functional.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    return x.clamp(0, 1) * 2 - 1


def make_unet():
    from diffusers import UNet2DModel

    return UNet2DModel(sample_size=16, in_channels=1, out_channels=1, block_out_channels=(32, 64, 64),
                       layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8,
                       attention_head_dim=16)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "mpq_export", "assets", "digits_ddpm"))
    args = ap.parse_args()

    import torch
    from diffusers import DDPMScheduler

    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    data = digits_16x16()
    unet = make_unet()
    ema = copy.deepcopy(unet).eval()
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=True)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-3, weight_decay=1e-4)
    g = torch.Generator().manual_seed(args.seed)
    losses, t0 = [], time.perf_counter()
    for step in range(1, args.steps + 1):
        idx = torch.randint(0, len(data), (args.batch,), generator=g)
        x0 = data[idx]
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, 1000, (args.batch,), generator=g)
        loss = torch.nn.functional.mse_loss(unet(sched.add_noise(x0, noise, t), t).sample, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            decay = min(0.995, (1 + step) / (10 + step))  # warm-up so early EMA is not all initial weights
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.mul_(decay).add_(p, alpha=1 - decay)
        losses.append(float(loss))
        if step % 100 == 0 or step == args.steps:
            print(f"step {step}/{args.steps} loss(avg 100) {sum(losses[-100:]) / len(losses[-100:]):.4f} "
                  f"{time.perf_counter() - t0:.0f}s", flush=True)
    seconds = time.perf_counter() - t0
    out = os.path.abspath(args.out)
    ema.to(torch.float16).save_pretrained(os.path.join(out, "unet"))
    sched.save_pretrained(os.path.join(out, "scheduler"))
    with open(os.path.join(out, "train_log.json"), "w") as f:
        json.dump({"steps": args.steps, "batch": args.batch, "seed": args.seed, "seconds": round(seconds, 1),
                   "threads": torch.get_num_threads(), "params": sum(p.numel() for p in unet.parameters()),
                   "loss_per_100_steps": [round(sum(losses[i:i + 100]) / len(losses[i:i + 100]), 4)
                                          for i in range(0, len(losses), 100)],
                   "command": "python tools/train_reference.py " + " ".join(f"--{k} {v}" for k, v in
                                                                         (("steps", args.steps), ("batch", args.batch), ("seed", args.seed)))},
                  f, indent=1)
    print(f"saved {out} ({seconds:.0f}s)")


if __name__ == "__main__":
    main()
