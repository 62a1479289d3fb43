"""Build LoRA state dicts in the real formats for tiny models (test helper)."""
from __future__ import annotations

import torch

from lora_lab.nodes.lora.lora_keys import KeyIndex

ATTN = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k", "attn2.to_v",
        "attn2.to_out.0")
FF = ("ff.net.0.proj", "ff.net.2")
TE = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")


def unet_layers(handle, suffixes=ATTN):
    return [(n, m) for n, m in handle.unet.named_modules() if n.endswith(suffixes)]


def te_layers(handle, i, suffixes=TE):
    model = handle.text_encoders[i]
    out = []
    for n, m in model.named_modules():
        if n.endswith(suffixes):
            out.append((n if n.startswith("text_model.") else "text_model." + n, m))
    return out


def _pair(w, rank, g, scale=0.1):
    down = torch.randn((rank, *w.shape[1:]), generator=g) * scale
    up = torch.randn((w.shape[0], rank, *([1, 1] if w.ndim == 4 else [])), generator=g) * scale
    if w.ndim == 4 and w.shape[2] == 1:  # 1x1 conv (SD 1.x proj_in): kohya writes 4D [r, in, 1, 1]
        down = down.reshape(rank, w.shape[1], 1, 1)
    return down, up


def kohya(handle, rank=4, alpha=2.0, ldm_names=False, seed=0, unet_suffixes=ATTN, te_suffixes=("q_proj", "fc1"),
          with_te=True):
    """kohya LoRA: lora_unet_<path>.lora_down/.lora_up/.alpha (diffusers or LDM paths)."""
    g = torch.Generator().manual_seed(seed)
    idx = KeyIndex(handle)
    sd = {}
    for name, mod in unet_layers(handle, unet_suffixes):
        n = idx.ldm_unet[name] if ldm_names else name
        base = "lora_unet_" + n.replace(".", "_")
        sd[base + ".lora_down.weight"], sd[base + ".lora_up.weight"] = _pair(mod.weight, rank, g)
        if alpha is not None:
            sd[base + ".alpha"] = torch.tensor(float(alpha))
    if with_te:
        n_te = len(handle.text_encoders)
        for i in range(n_te):
            pre = "lora_te_" if n_te == 1 else f"lora_te{i + 1}_"
            for name, mod in te_layers(handle, i, te_suffixes):
                base = pre + name.replace(".", "_")
                sd[base + ".lora_down.weight"], sd[base + ".lora_up.weight"] = _pair(mod.weight, rank, g)
                if alpha is not None:
                    sd[base + ".alpha"] = torch.tensor(float(alpha) * 2)
    return sd


def peft_unet(handle, rank=4, seed=0, prefix="unet."):
    """PEFT/diffusers names: unet.<path>.lora_A.weight / lora_B.weight (alpha = rank)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, mod in unet_layers(handle):
        down, up = _pair(mod.weight, rank, g)
        sd[f"{prefix}{name}.lora_A.weight"] = down
        sd[f"{prefix}{name}.lora_B.weight"] = up
    return sd
