"""Tiny stand-in model files for bench/comfy_examples.py: checkpoints (9-channel UNet for an
inpainting name, the `v_pred` marker for an SD 2.x 768-v name), VAEs, kohya LoRAs and embeddings
of the tiny SD 1.x / 2.x / SDXL layouts (nodes/model/tiny_models.py), written under any file name
a graph asks for, seeded from that name. .safetensors, or a plain state dict for .ckpt/.pt."""
from __future__ import annotations

import re
import zlib
from pathlib import Path

_FAM = {"SD 1.x": "sd1", "SD 2.x": "sd2", "SDXL": "sdxl"}

def _seed(name: str) -> int:
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


def tiny_handle(family: str, name: str):
    import torch
    from diffusers import UNet2DConditionModel
    from lora_lab.nodes.model import tiny_models
    from lora_lab.nodes.model.checkpoint import tokenizers_for
    from lora_lab.nodes.model.handle import ModelHandle

    fam = _FAM[family]
    unet, vae, encoders = tiny_models.build_components(fam, seed=_seed(name))
    if "inpaint" in name.lower():  # an inpainting checkpoint: 9-channel UNet (latent + mask + masked latent)
        torch.manual_seed(_seed(name))
        unet = UNet2DConditionModel(**{**tiny_models.unet_config(fam), "in_channels": 9}).eval().requires_grad_(False)
    v_pred = fam == "sd2" and re.search(r"768|wd-1-5|wd-illusion", name.lower()) is not None
    return ModelHandle(fam, "v_prediction" if v_pred else "epsilon", unet, vae, encoders, tokenizers_for(fam),
                       source=f"tiny-{name}")


def _write(sd: dict, path: Path) -> None:
    import torch
    from lora_lab.nodes.io.safetensors_write import save_safetensors

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_safetensors(sd, path, overwrite=True)
    else:  # .ckpt / .pt / .pth: a plain state dict, what torch.load(weights_only=True) reads
        torch.save({"state_dict": sd}, path)


def write_checkpoint(models: Path, name: str, family: str) -> None:
    import torch
    from lora_lab.nodes.model.checkpoint_save import ldm_state_dict

    path = models / "checkpoints" / name
    if path.exists():
        return
    h = tiny_handle(family, name)
    sd = dict(ldm_state_dict(h.family, h.unet, h.vae, h.text_encoders))
    if h.prediction_type == "v_prediction":
        sd["v_pred"] = torch.tensor([])  # the marker ComfyUI writes (our loader reads it too)
    _write(sd, path)


def write_vae(models: Path, name: str, family: str) -> None:
    from lora_lab.nodes.model import ckpt_keys
    from lora_lab.nodes.model.checkpoint_save import ldm_state_dict

    path = models / "vae" / name
    if not path.exists():
        h = tiny_handle(family, name)
        sd = ldm_state_dict(h.family, h.unet, h.vae, h.text_encoders)
        _write({k[len(ckpt_keys.VAE_PREFIX):]: v for k, v in sd.items() if k.startswith(ckpt_keys.VAE_PREFIX)}, path)


def write_lora(models: Path, name: str, family: str) -> None:
    """A kohya LoRA (lora_unet_* / lora_te*_ down, up, alpha) on the attention / MLP layers of the tiny model."""
    import torch
    from lora_lab.nodes.lora.lora_keys import KeyIndex, kohya_name

    path = models / "loras" / name
    if path.exists():
        return
    h = tiny_handle(family, name)
    g, idx, sd = torch.Generator().manual_seed(_seed(name)), KeyIndex(h), {}

    def pair(key, w):
        down = torch.randn((4, *w.shape[1:]), generator=g) * 0.1
        sd[key + ".lora_down.weight"], sd[key + ".lora_up.weight"] = down, torch.randn((w.shape[0], 4), generator=g) * 0.1
        sd[key + ".alpha"] = torch.tensor(2.0)

    for mod_name, mod in h.unet.named_modules():
        if mod_name.endswith(("attn2.to_k", "attn2.to_v", "attn1.to_q")):
            pair(kohya_name(h.family, idx, "unet", mod_name), mod.weight)
    for i, enc in enumerate(h.text_encoders):
        for mod_name, mod in enc.named_modules():
            if mod_name.endswith(("q_proj", "fc1")):
                full = mod_name if mod_name.startswith("text_model.") else "text_model." + mod_name
                pair(kohya_name(h.family, idx, f"te{i + 1}", full), mod.weight)
    _write(sd, path)


def write_embedding(models: Path, name: str, family: str) -> None:
    """An A1111 embedding ({"string_to_param": {"*": [2, width]}}), or SDXL's clip_l / clip_g pair."""
    import torch

    path = models / "embeddings" / (name if Path(name).suffix in (".pt", ".safetensors") else name + ".pt")
    if path.exists():
        return
    h = tiny_handle(family, name)
    widths = [e.config.hidden_size for e in h.text_encoders]
    g = torch.Generator().manual_seed(_seed(name))
    if h.family == "sdxl":
        sd = {"clip_l": torch.randn((2, widths[0]), generator=g), "clip_g": torch.randn((2, widths[1]), generator=g)}
        _write(sd, path.with_suffix(".safetensors"))
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"string_to_param": {"*": torch.randn((2, widths[0]), generator=g)}, "name": Path(name).stem}, path)
