#!/usr/bin/env python3
"""The budget range each denoiser architecture reaches on each target, with the default pins and
candidate bits 4 and 8: the lowest and highest average stored weight bits an allocation can have.

    python tools/budget_ranges.py [ARCH ...]      (default: every architecture of tools/make_unet.py)

The architectures are built on torch's meta device (no weights, no memory), and their Linear and Conv
layers become the layers mpq-export quantizes (Linear -> MatMul/Gemm, Conv2d -> Conv): the same names
and parameter counts inspect finds in the exported ONNX, so the ranges are the ones `--budget`
accepts. README's model table comes from this script.

With --ranks, what the low-rank ladder (w4a16-lr<e>, formats/lowrank.py) costs on each model instead: the
bits one rank adds to a GEMM (16 (K + N) / (K N), weighted by the GEMMs' parameters) and, per format of the
ladder, the weighted mean rank it gives and the average bits it adds. `digits-dit` is the bundled
transformer (its config.json).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mpq_export.stages.allocate import AllocationSettings, candidates, reachable_range  # noqa: E402
from mpq_export.inputs.export import model_layers  # noqa: E402
from mpq_export.targets import all_targets  # noqa: E402


def build(arch: str):
    import diffusers
    import torch
    from make_unet import CONFIGS, TRANSFORMERS

    with torch.device("meta"):
        if arch == "digits-dit":  # the bundled transformer, by its own config
            import json

            folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "mpq_export", "assets",
                                  "digits_dit", "transformer")
            with open(os.path.join(folder, "config.json")) as f:
                cfg = json.load(f)
            cls = getattr(diffusers, cfg["_class_name"])
            return cfg["_class_name"], cls.from_config(cfg)
        if arch in TRANSFORMERS:
            cls_name, cfg = TRANSFORMERS[arch]
            return cls_name, getattr(diffusers, cls_name)(**cfg)
        return "UNet2DConditionModel", diffusers.UNet2DConditionModel(**CONFIGS[arch])


def main() -> None:
    from make_unet import CONFIGS, TRANSFORMERS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("arch", nargs="*", default=list(CONFIGS) + list(TRANSFORMERS))
    ap.add_argument("--ranks", action="store_true", help="the low-rank ladder's ranks and bit costs per model")
    args = ap.parse_args()
    if args.ranks:
        rank_costs(args.arch)
        return
    targets = all_targets()
    print("| architecture | class | parameters | " + " | ".join(f"{t.name} budget" for t in targets) + " |")
    print("|---|---|---:|" + "---:|" * len(targets))
    for arch in args.arch:
        cls_name, model = build(arch)
        layers = model_layers(model)
        cells = []
        for t in targets:
            lo, hi = reachable_range(layers, candidates(layers, t, AllocationSettings())[0])
            cells.append(f"{lo:.2f} to {hi:.2f}")
        n = sum(l.params for l in layers)
        print(f"| {arch} | {cls_name} | {n / 1e6:.1f} M | " + " | ".join(cells) + " |")


def rank_costs(archs: list[str]) -> None:
    from mpq_export.formats import GEMM_OPS, LOW_RANK_LADDER
    from mpq_export.formats.lowrank import gemm_dims

    print("| architecture | GEMM weights | bits per rank | " + " | ".join(f"`{f.name}` rank, bits" for f in LOW_RANK_LADDER)
          + " |")
    print("|---|---:|---:|" + "---:|" * len(LOW_RANK_LADDER))
    for arch in archs:
        _, model = build(arch)
        gemms = [l for l in model_layers(model) if l.op_type in GEMM_OPS and LOW_RANK_LADDER[0].applies_to(l)]
        total = sum(l.params for l in gemms)

        def weighted(value) -> float:
            return sum(value(l) * l.params for l in gemms) / total

        per_rank = weighted(lambda l: 16 * sum(gemm_dims(l)) / l.params)
        cells = [f"{weighted(f.rank):.1f}, +{weighted(lambda l: f.layer_bits(l) / l.params - 4):.3f}"
                 for f in LOW_RANK_LADDER]
        print(f"| {arch} | {total / 1e6:.1f} M | {per_rank:.3f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
