#!/usr/bin/env python3
"""The budget range each denoiser architecture reaches on each target, with the default pins and
candidate bits 4 and 8: the lowest and highest average stored weight bits an allocation can have.

    python tools/budget_ranges.py [ARCH ...]      (default: every architecture of tools/make_unet.py)

The architectures are built on torch's meta device (no weights, no memory), and their Linear and Conv
layers become the layers mpq-export quantizes (Linear -> MatMul/Gemm, Conv2d -> Conv): the same names
and parameter counts inspect finds in the exported ONNX, so the ranges are the ones `--budget`
accepts. README's model table comes from this script.
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
        if arch in TRANSFORMERS:
            cls_name, cfg = TRANSFORMERS[arch]
            return cls_name, getattr(diffusers, cls_name)(**cfg)
        return "UNet2DConditionModel", diffusers.UNet2DConditionModel(**CONFIGS[arch])


def main() -> None:
    from make_unet import CONFIGS, TRANSFORMERS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("arch", nargs="*", default=list(CONFIGS) + list(TRANSFORMERS))
    args = ap.parse_args()
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


if __name__ == "__main__":
    main()
