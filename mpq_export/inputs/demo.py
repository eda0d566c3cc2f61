"""The bundled reference model for `mpq-export --demo`.

A diffusers UNet2DModel DDPM (1.16 M parameters) trained by tools/train_reference.py on
scikit-learn's digits at 16x16; FP16 weights in mpq_export/assets/digits_ddpm/unet with the
scheduler config in ../scheduler. The pipeline exports it to ONNX once (torch, cached).
"""

from __future__ import annotations

import os

from mpq_export.util.errors import MPQError

# The demo's budget on each target is the target's own (Target.demo_budget).
PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # mpq_export/
ASSET_DIR = os.path.join(PACKAGE_DIR, "assets", "digits_ddpm")


def demo_model() -> str:
    unet = os.path.join(ASSET_DIR, "unet")
    if not os.path.exists(os.path.join(unet, "config.json")):
        raise MPQError(f"the bundled demo model is missing from {unet}; reinstall, or train it: python tools/train_reference.py")
    if not os.path.exists(os.path.join(ASSET_DIR, "scheduler", "scheduler_config.json")):
        raise MPQError(f"the demo's scheduler config is missing from {ASSET_DIR}/scheduler; python tools/train_reference.py")
    return unet
