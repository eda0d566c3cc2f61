"""Small random-weight diffusers UNets, built and exported on the fly for the tests (seconds each)."""

from __future__ import annotations

import os


def tiny_unet2d(seed: int = 0, size: int = 16, channels=(16, 32), attention: bool = True):
    import torch
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    down = ("DownBlock2D", "AttnDownBlock2D" if attention else "DownBlock2D")
    up = ("AttnUpBlock2D" if attention else "UpBlock2D", "UpBlock2D")
    return UNet2DModel(sample_size=size, in_channels=1, out_channels=1, block_out_channels=channels, layers_per_block=1,
                       down_block_types=down, up_block_types=up, norm_num_groups=8, attention_head_dim=8)


def tiny_unet2d_condition(seed: int = 0, size: int = 8, channels=(16, 32), cross_dim: int = 16):
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(sample_size=size, in_channels=4, out_channels=4, block_out_channels=channels,
                                layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), norm_num_groups=8,
                                cross_attention_dim=cross_dim, attention_head_dim=4)


def export(unet, folder: str, name: str = "model.onnx", seq_len: int = 8) -> str:
    from mpq_export.inputs.export import export_module

    path = os.path.join(folder, name)
    export_module(unet, path, seq_len=seq_len)
    return path
