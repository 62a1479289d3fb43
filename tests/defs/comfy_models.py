"""A small checkpoint that ComfyUI's own model detection reads as SD 1.5 (test helper).

ComfyUI picks its model class by a few numbers of the UNet (320 base channels, 768-wide
context, no linear projection) and uses full-size CLIP-L and KL-f8 VAE for SD 1.5, so those
stay full size; the UNet has two levels with one resnet and one transformer each. Random,
seeded weights (written in fp16: ~0.5 GB).
"""
from __future__ import annotations

from pathlib import Path

import torch
from lora_lab.nodes.model import checkpoint_save, tiny_models
from lora_lab.nodes.model.checkpoint import tokenizers_for
from lora_lab.nodes.model.handle import ModelHandle

UNET = dict(sample_size=64, in_channels=4, out_channels=4, down_block_types=["CrossAttnDownBlock2D"] * 2,
            up_block_types=["CrossAttnUpBlock2D"] * 2, block_out_channels=[320, 640], layers_per_block=1,
            cross_attention_dim=768, attention_head_dim=8, use_linear_projection=False)
VAE = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
           up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[128, 256, 512, 512], layers_per_block=2,
           latent_channels=4, sample_size=512, scaling_factor=0.18215)
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768, bos_token_id=49406,
              eos_token_id=49407, pad_token_id=1)


def small_sd15_handle(seed: int = 0) -> ModelHandle:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    g = torch.Generator().manual_seed(seed)
    unet, vae, te = UNet2DConditionModel(**UNET), AutoencoderKL(**VAE), CLIPTextModel(CLIPTextConfig(**CLIP_L))
    for m in (unet, vae, te):
        tiny_models._init_(m, g)
        m.eval().requires_grad_(False)
    return ModelHandle("sd1", "epsilon", unet, vae, (te,), tokenizers_for("sd1"), source="small-sd15")


def write_small_sd15(path: Path, seed: int = 0) -> Path:
    if not Path(path).is_file():
        checkpoint_save.save_single_file(path, small_sd15_handle(seed), dtype=torch.float16)
    return Path(path)
