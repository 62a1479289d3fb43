"""The diffusers / transformers classes LoRA Lab builds, imported from their own modules.

`from diffusers import AutoencoderKL` resolves through diffusers' lazy top-level module; the
module paths here name exactly what is used, so a reader (and `-X importtime`) sees which
library modules a model load needs. Every import is inside a function: importing LoRA Lab, listing
node inputs or validating a graph loads neither library (nor torch, through them).

What these imports still cost is the libraries' own, not ours (measured with -X importtime on
diffusers 0.42 / transformers 5.24, see bench/startup.py): importing any diffusers module runs
`diffusers/__init__` (-> utils.torch_utils -> torch._dynamo) and its package `__init__`s
(`models.unets`, `models.autoencoders` and `models.transformers` import every model they hold,
-> diffusers.hooks -> peft when installed); transformers' `modeling_utils` imports
torch._dynamo and `transformers.loss` (-> scipy.optimize). None of these is switchable
without replacing the libraries' packages in sys.modules, which LoRA Lab does not do (it would
break any other code in the process, ComfyUI's included, that imports those packages).
"""
from __future__ import annotations


def unet_class():
    """diffusers' UNet2DConditionModel (SD 1.x / 2.x / SDXL UNets)."""
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel

    return UNet2DConditionModel


def vae_class():
    """diffusers' AutoencoderKL (the SD VAE)."""
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL

    return AutoencoderKL


def clip_text_classes():
    """(CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection) from transformers."""
    from transformers.models.clip.configuration_clip import CLIPTextConfig
    from transformers.models.clip.modeling_clip import (
        CLIPTextModel,
        CLIPTextModelWithProjection,
    )

    return CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection


def clip_tokenizer_class():
    """transformers' CLIPTokenizer."""
    from transformers.models.clip.tokenization_clip import CLIPTokenizer

    return CLIPTokenizer
