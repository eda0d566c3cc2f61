#!/usr/bin/env python3
"""Train the bundled reference models: diffusers UNet2DModel DDPMs on data that ships with scikit-learn.

Offline, seeded and deterministic on one machine; two models on different data, so that no quality
claim rests on one model:
  digits   the 1,797 8x8 digits upsampled to 16x16, 1 channel; blocks 32/64/64, self-attention
           at 8x8 and 4x4 (mpq_export/assets/digits_ddpm, the demo model)
  patches  16x16 RGB crops (random position, random flip) of scikit-learn's two sample photographs
           (china.jpg, flower.jpg) at quarter resolution: natural-image colour and texture, 3
           channels; blocks 32/64/96, self-attention at 8x8 and 4x4 (mpq_export/assets/patches_ddpm)
Both: pixels in [-1, 1], cosine noise schedule, epsilon prediction, AdamW 1e-3, batch 64, EMA 0.995.
The EMA weights are saved in FP16 (half the bytes; loaded back as FP32 by diffusers) to
OUT/{unet,scheduler}/, with train_log.json (time, loss curve).
  digits-flow  a different model and objective on the digits: a class-conditional SD3-style MMDiT
           (diffusers SD3Transformer2DModel, 4 joint blocks of width 64, patch 2) trained by flow
           matching (rectified flow: x_t = (1 - s) x_0 + s noise, velocity target noise - x_0, s
           uniform, timestep 1000 s). The class enters as the text would: a fixed random 4-token
           "caption" and pooled vector per class (11 rows: the digits and a null class, dropped in 10 %
           of the steps for guidance), shipped as calib_data.npz beside the weights
           (mpq_export/assets/digits_dit); FlowMatchEulerDiscreteScheduler, AdamW 5e-4, EMA 0.999.

    python tools/train_reference.py [--data digits|patches|digits-flow] [--steps 1500] [--out DIR]

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


def photo_patches():
    """The two sample photographs at quarter resolution, [2, 3, H, W] in [-1, 1]; crops are drawn per step."""
    import numpy as np
    import torch
    from sklearn.datasets import load_sample_images

    imgs = np.stack(load_sample_images().images).astype(np.float32) / 255.0  # [2, 427, 640, 3]
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2)
    x = torch.nn.functional.avg_pool2d(x, 4)  # [2, 3, 106, 160]
    return x * 2 - 1


def random_crops(images, n: int, g, size: int = 16):
    import torch

    _, _, h, w = images.shape
    idx = torch.randint(0, images.shape[0], (n,), generator=g)
    ys = torch.randint(0, h - size + 1, (n,), generator=g)
    xs = torch.randint(0, w - size + 1, (n,), generator=g)
    flip = torch.rand(n, generator=g) < 0.5
    out = torch.stack([images[i, :, y:y + size, x:x + size] for i, y, x in zip(idx.tolist(), ys.tolist(), xs.tolist())])
    out[flip] = out[flip].flip(-1)
    return out


def make_unet(data: str = "digits"):
    from diffusers import UNet2DModel

    if data == "patches":
        return UNet2DModel(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(32, 64, 96),
                           layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
                           up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8,
                           attention_head_dim=16)
    return UNet2DModel(sample_size=16, in_channels=1, out_channels=1, block_out_channels=(32, 64, 64),
                       layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8,
                       attention_head_dim=16)


def make_dit():
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=1, out_channels=1, num_layers=4,
                                 attention_head_dim=16, num_attention_heads=4, joint_attention_dim=32,
                                 caption_projection_dim=64, pooled_projection_dim=32, pos_embed_max_size=16)


CLASS_TOKENS, NULL_CLASS = 4, 10


def class_embeddings(seed: int):
    """(caption [11, 4, 32], pooled [11, 32]): fixed random conditioning per class; row 10 is the null class."""
    import torch

    g = torch.Generator().manual_seed(seed + 1)
    return torch.randn(11, CLASS_TOKENS, 32, generator=g), torch.randn(11, 32, generator=g)


def train_flow(args) -> None:
    """digits-flow: the class-conditional MMDiT by flow matching (see the module's docstring)."""
    import numpy as np
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler
    from sklearn.datasets import load_digits

    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    data = digits_16x16()
    labels = torch.from_numpy(load_digits().target.astype(np.int64))
    ctx, pooled = class_embeddings(args.seed)
    model = make_dit()
    ema = copy.deepcopy(model).eval()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=1e-4)
    g = torch.Generator().manual_seed(args.seed)
    losses, t0 = [], time.perf_counter()
    for step in range(1, args.steps + 1):
        idx = torch.randint(0, len(data), (args.batch,), generator=g)
        x0, y = data[idx], labels[idx].clone()
        y[torch.rand(args.batch, generator=g) < 0.1] = NULL_CLASS
        noise = torch.randn(x0.shape, generator=g)
        s = torch.rand(args.batch, generator=g)
        xt = (1 - s[:, None, None, None]) * x0 + s[:, None, None, None] * noise
        v = model(hidden_states=xt, timestep=s * 1000, encoder_hidden_states=ctx[y], pooled_projections=pooled[y],
                  return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(v, noise - x0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        _after_step(step, args.steps, ema, model, float(loss.detach()), losses, t0, max_decay=0.999)
    seconds = time.perf_counter() - t0
    out = os.path.abspath(args.out)
    ema.to(torch.float16).save_pretrained(os.path.join(out, "transformer"))
    FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0).save_pretrained(os.path.join(out, "scheduler"))
    # calibration and validation conditioning: the classes in turn, the null class as the unconditional row
    rows = np.arange(64) % 10
    np.savez(os.path.join(out, "calib_data.npz"), encoder_hidden_states=ctx[rows].numpy(),
             pooled_projections=pooled[rows].numpy(), uncond_encoder_hidden_states=ctx[NULL_CLASS:].numpy(),
             uncond_pooled_projections=pooled[NULL_CLASS:].numpy(),
             mpq_export_source=np.array("the digits classes 0-9 in turn (fixed random class embeddings of "
                                        "tools/train_reference.py --data digits-flow)"))
    _log(out, args, seconds, sum(p.numel() for p in model.parameters()), losses)
    print(f"saved {out} ({seconds:.0f}s)")


def _after_step(step: int, steps: int, ema, model, loss: float, losses: list[float], t0: float,
                max_decay: float) -> None:
    """The EMA update (warm-up so early EMA is not all initial weights), the loss log, progress every 100 steps."""
    import torch

    with torch.no_grad():
        decay = min(max_decay, (1 + step) / (10 + step))
        for pe, p in zip(ema.parameters(), model.parameters()):
            pe.mul_(decay).add_(p, alpha=1 - decay)
    losses.append(loss)
    if step % 100 == 0 or step == steps:
        print(f"step {step}/{steps} loss(avg 100) {sum(losses[-100:]) / len(losses[-100:]):.4f} "
              f"{time.perf_counter() - t0:.0f}s", flush=True)


def _log(out: str, args, seconds: float, params: int, losses: list[float]) -> None:
    import torch

    with open(os.path.join(out, "train_log.json"), "w") as f:
        json.dump({"data": args.data, "steps": args.steps, "batch": args.batch, "seed": args.seed,
                   "seconds": round(seconds, 1), "threads": torch.get_num_threads(), "params": params,
                   "loss_per_100_steps": [round(sum(losses[i:i + 100]) / len(losses[i:i + 100]), 4)
                                          for i in range(0, len(losses), 100)],
                   "command": "python tools/train_reference.py " + " ".join(
                       f"--{k} {v}" for k, v in (("data", args.data), ("steps", args.steps), ("batch", args.batch),
                                                 ("seed", args.seed)))}, f, indent=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", choices=("digits", "patches", "digits-flow"), default="digits")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="default mpq_export/assets/{digits,patches}_ddpm")
    args = ap.parse_args()
    if args.out is None:
        name = "digits_dit" if args.data == "digits-flow" else f"{args.data}_ddpm"
        args.out = os.path.join(os.path.dirname(__file__), "..", "mpq_export", "assets", name)
    if args.data == "digits-flow":
        return train_flow(args)

    import torch
    from diffusers import DDPMScheduler

    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    data = digits_16x16() if args.data == "digits" else photo_patches()
    unet = make_unet(args.data)
    ema = copy.deepcopy(unet).eval()
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=True)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-3, weight_decay=1e-4)
    g = torch.Generator().manual_seed(args.seed)
    losses, t0 = [], time.perf_counter()
    for step in range(1, args.steps + 1):
        if args.data == "digits":
            x0 = data[torch.randint(0, len(data), (args.batch,), generator=g)]
        else:
            x0 = random_crops(data, args.batch, g)
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, 1000, (args.batch,), generator=g)
        loss = torch.nn.functional.mse_loss(unet(sched.add_noise(x0, noise, t), t).sample, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        _after_step(step, args.steps, ema, unet, float(loss.detach()), losses, t0, max_decay=0.995)
    seconds = time.perf_counter() - t0
    out = os.path.abspath(args.out)
    ema.to(torch.float16).save_pretrained(os.path.join(out, "unet"))
    sched.save_pretrained(os.path.join(out, "scheduler"))
    _log(out, args, seconds, sum(p.numel() for p in unet.parameters()), losses)
    print(f"saved {out} ({seconds:.0f}s)")


if __name__ == "__main__":
    main()
