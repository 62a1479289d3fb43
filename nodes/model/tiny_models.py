"""Tiny models with the real SD 1.x / SD 2.x / SDXL block layouts (small widths).

Used for the embedded demo model and by the tests. Every channel count is a multiple of 32
(GroupNorm with 32 groups); the CLIP towers keep the real 49408-token vocabulary so the
shipped tokenizers drive them. Weights are drawn from a seeded CPU generator in sorted
parameter order, so the same seed gives the same bytes on every machine.
"""
from __future__ import annotations

import math

import torch

from .handle import VAE_SCALING

SD1_BLOCKS_DOWN = ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
SD1_BLOCKS_UP = ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3


def unet_config(family: str) -> dict:
    if family in ("sd1", "sd2"):
        cfg = dict(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            down_block_types=SD1_BLOCKS_DOWN,
            up_block_types=SD1_BLOCKS_UP,
            block_out_channels=[32, 64, 64, 64],
            layers_per_block=2,
            cross_attention_dim=32,
            transformer_layers_per_block=[1, 1, 1, 1],
        )
        if family == "sd1":
            cfg.update(attention_head_dim=8, use_linear_projection=False)
        else:
            cfg.update(attention_head_dim=[1, 1, 1, 1], use_linear_projection=True)
        return cfg
    if family == "sdxl":
        return dict(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
            block_out_channels=[32, 64, 64],
            layers_per_block=2,
            cross_attention_dim=96,  # CLIP-L 32 + bigG 64, concatenated
            transformer_layers_per_block=[1, 1, 2],
            attention_head_dim=[1, 1, 1],
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=64 + 6 * 8,  # pooled (bigG) + 6 embedded sizes
        )
    raise ValueError(f"unknown family {family!r}")


def vae_config(family: str) -> dict:
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[32, 64, 64, 64],
        layers_per_block=2,
        latent_channels=4,
        sample_size=64,
        scaling_factor=VAE_SCALING[family],
    )


def text_configs(family: str) -> list[dict]:
    base = dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=1, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407)
    clip_l = dict(base, hidden_act="quick_gelu", projection_dim=32, pad_token_id=1)
    open_clip = dict(base, hidden_act="gelu", projection_dim=32, pad_token_id=0)
    # SDXL's bigG is wider than its CLIP-L (1280 vs 768); loaders tell them apart by width.
    big_g = dict(open_clip, hidden_size=64, intermediate_size=128, projection_dim=64)
    return {"sd1": [clip_l], "sd2": [open_clip], "sdxl": [clip_l, big_g]}[family]


def _init_(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Deterministic init: weights ~ N(0, 1/fan_in), norms 1, biases small."""
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            if p.ndim >= 2:
                fan_in = math.prod(p.shape[1:])
                p.copy_(torch.randn(p.shape, generator=generator) / math.sqrt(fan_in))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=generator))
            else:
                p.copy_(0.02 * torch.randn(p.shape, generator=generator))


def build_components(family: str, seed: int = 0):
    """(unet, vae, text_encoders) of the tiny layout, deterministic for a seed."""
    from .hf_classes import clip_text_classes, unet_class, vae_class

    UNet2DConditionModel, AutoencoderKL = unet_class(), vae_class()
    CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection = clip_text_classes()

    g = torch.Generator().manual_seed(seed)
    unet = UNet2DConditionModel(**unet_config(family))
    vae = AutoencoderKL(**vae_config(family))
    encoders = []
    for i, cfg in enumerate(text_configs(family)):
        cls = CLIPTextModelWithProjection if (family == "sdxl" and i == 1) else CLIPTextModel
        encoders.append(cls(CLIPTextConfig(**cfg)))
    for m in (unet, vae, *encoders):
        _init_(m, g)
        m.eval().requires_grad_(False)
    return unet, vae, tuple(encoders)
