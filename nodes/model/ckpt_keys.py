"""Key tables between the single-file (LDM / A1111 / sgm) layout and diffusers components.

Pure functions: a table of (ldm prefix, diffusers prefix, kind) block pairs is built from a
component config, and each key is translated by its block prefix plus a per-kind suffix
rename. The same table serves both directions (loading and saving checkpoints).
"""
from __future__ import annotations

import torch

# Resnet blocks: LDM (openaimodel ResBlock) suffix -> diffusers ResnetBlock2D suffix.
UNET_RESNET = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}
VAE_RESNET = {"nin_shortcut": "conv_shortcut"}
# VAE mid attention: LDM stores q/k/v/proj_out as 1x1 convs [C, C, 1, 1]; diffusers as Linear [C, C].
VAE_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
# Text encoder prefixes per family: (prefix, layout) with layout "hf" (CLIP-L, HF names) or
# "openclip" (OpenCLIP names, fused in_proj).
TEXT_PREFIXES = {
    "sd1": (("cond_stage_model.transformer.", "hf"),),
    "sd2": (("cond_stage_model.model.", "openclip"),),
    "sdxl": (("conditioner.embedders.0.transformer.", "hf"), ("conditioner.embedders.1.model.", "openclip")),
}


# ----------------------------------------------------------------------------------- UNet
def unet_block_pairs(cfg: dict) -> list[tuple[str, str, str]]:
    """(ldm prefix, diffusers prefix, kind) for every block of a UNet2DConditionModel config."""
    chans = list(cfg["block_out_channels"])
    lpb = cfg["layers_per_block"]
    n_levels = len(chans)
    down_attn = ["CrossAttn" in t for t in cfg["down_block_types"]]
    up_attn = ["CrossAttn" in t for t in cfg["up_block_types"]]
    pairs = [
        ("time_embed.0", "time_embedding.linear_1", "plain"),
        ("time_embed.2", "time_embedding.linear_2", "plain"),
        ("input_blocks.0.0", "conv_in", "plain"),
        ("out.0", "conv_norm_out", "plain"),
        ("out.2", "conv_out", "plain"),
        ("middle_block.0", "mid_block.resnets.0", "resnet"),
        ("middle_block.1", "mid_block.attentions.0", "attn"),
        ("middle_block.2", "mid_block.resnets.1", "resnet"),
    ]
    if cfg.get("addition_embed_type") == "text_time":
        pairs += [
            ("label_emb.0.0", "add_embedding.linear_1", "plain"),
            ("label_emb.0.2", "add_embedding.linear_2", "plain"),
        ]
    n = 1
    for i in range(n_levels):
        for j in range(lpb):
            pairs.append((f"input_blocks.{n}.0", f"down_blocks.{i}.resnets.{j}", "resnet"))
            if down_attn[i]:
                pairs.append((f"input_blocks.{n}.1", f"down_blocks.{i}.attentions.{j}", "attn"))
            n += 1
        if i < n_levels - 1:
            pairs.append((f"input_blocks.{n}.0.op", f"down_blocks.{i}.downsamplers.0.conv", "plain"))
            n += 1
    n = 0
    for i in range(n_levels):
        for j in range(lpb + 1):
            pairs.append((f"output_blocks.{n}.0", f"up_blocks.{i}.resnets.{j}", "resnet"))
            if up_attn[i]:
                pairs.append((f"output_blocks.{n}.1", f"up_blocks.{i}.attentions.{j}", "attn"))
            if j == lpb and i < n_levels - 1:
                k = 2 if up_attn[i] else 1
                pairs.append((f"output_blocks.{n}.{k}.conv", f"up_blocks.{i}.upsamplers.0.conv", "plain"))
            n += 1
    return pairs


def vae_block_pairs(cfg: dict) -> list[tuple[str, str, str]]:
    """(ldm prefix, diffusers prefix, kind) for every block of an AutoencoderKL config."""
    n_levels = len(cfg["block_out_channels"])
    lpb = cfg["layers_per_block"]
    pairs = [
        ("quant_conv", "quant_conv", "plain"),
        ("post_quant_conv", "post_quant_conv", "plain"),
    ]
    for side in ("encoder", "decoder"):
        pairs += [
            (f"{side}.conv_in", f"{side}.conv_in", "plain"),
            (f"{side}.conv_out", f"{side}.conv_out", "plain"),
            (f"{side}.norm_out", f"{side}.conv_norm_out", "plain"),
            (f"{side}.mid.block_1", f"{side}.mid_block.resnets.0", "vae_resnet"),
            (f"{side}.mid.block_2", f"{side}.mid_block.resnets.1", "vae_resnet"),
            (f"{side}.mid.attn_1", f"{side}.mid_block.attentions.0", "vae_attn"),
        ]
    for i in range(n_levels):
        for j in range(lpb):
            pairs.append((f"encoder.down.{i}.block.{j}", f"encoder.down_blocks.{i}.resnets.{j}", "vae_resnet"))
        if i < n_levels - 1:
            pairs.append((f"encoder.down.{i}.downsample.conv", f"encoder.down_blocks.{i}.downsamplers.0.conv", "plain"))
        # The LDM decoder counts levels from the lowest resolution up: up.{L-1} runs first.
        u = n_levels - 1 - i
        for j in range(lpb + 1):
            pairs.append((f"decoder.up.{i}.block.{j}", f"decoder.up_blocks.{u}.resnets.{j}", "vae_resnet"))
        if i > 0:
            pairs.append((f"decoder.up.{i}.upsample.conv", f"decoder.up_blocks.{u}.upsamplers.0.conv", "plain"))
    return pairs


_SUFFIX_MAPS = {"resnet": UNET_RESNET, "vae_resnet": VAE_RESNET, "vae_attn": VAE_ATTN}


def _rename_suffix(suffix: str, table: dict | None) -> str | None:
    """Rename the module part of `suffix` ("in_layers.0.weight") with `table`; None if unknown."""
    if not table:
        return suffix
    for old, new in table.items():
        if suffix.startswith(old + "."):
            return new + suffix[len(old):]
    return None


def block_lookup(pairs, ldm_side: bool) -> dict:
    """prefix -> (other prefix, kind) for one direction."""
    return {(a if ldm_side else b): ((b if ldm_side else a), kind) for a, b, kind in pairs}


def translate(key: str, lookup: dict, to_diffusers: bool) -> tuple[str, str] | None:
    """Translate one key with a block lookup; returns (new key, kind) or None."""
    parts = key.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:cut])
        hit = lookup.get(prefix)
        if hit is None:
            continue
        other, kind = hit
        suffix = ".".join(parts[cut:])
        table = _SUFFIX_MAPS.get(kind)
        if table is not None and not to_diffusers:
            table = {v: k for k, v in table.items()}
        new_suffix = _rename_suffix(suffix, table)
        if new_suffix is None:
            if kind != "vae_resnet":  # VAE resnets keep their other names (norm1, conv1, ...)
                return None
            new_suffix = suffix
        return f"{other}.{new_suffix}", kind
    return None


def ldm_to_diffusers(sd: dict, pairs, strip: str) -> tuple[dict, list[str]]:
    """Map LDM keys under `strip` to diffusers keys. Returns (new dict, LDM keys left unmatched).

    Tensors are not copied except the VAE attention 1x1 convs, reshaped to Linear weights.
    """
    lookup = block_lookup(pairs, ldm_side=True)
    out, unmatched = {}, []
    for key in sd:
        if not key.startswith(strip):
            continue
        value = sd[key]
        hit = translate(key[len(strip):], lookup, to_diffusers=True)
        if hit is None:
            unmatched.append(key)
            continue
        new_key, kind = hit
        if kind == "vae_attn" and new_key.endswith(".weight") and value.ndim == 4:
            value = value.reshape(value.shape[0], value.shape[1])  # [C, C, 1, 1] -> [C, C]
        out[new_key] = value
    return out, unmatched


def diffusers_to_ldm(sd: dict, pairs, prefix: str) -> tuple[dict, list[str]]:
    """Inverse of ldm_to_diffusers: diffusers keys -> LDM keys under `prefix`."""
    lookup = block_lookup(pairs, ldm_side=False)
    out, unmatched = {}, []
    for key, value in sd.items():
        hit = translate(key, lookup, to_diffusers=False)
        if hit is None:
            unmatched.append(key)
            continue
        new_key, kind = hit
        if kind == "vae_attn" and new_key.endswith(".weight") and value.ndim == 2:
            value = value.reshape(value.shape[0], value.shape[1], 1, 1)
        out[prefix + new_key] = value
    return out, unmatched


# ------------------------------------------------------------------------------ CLIP (HF)
def hf_clip_to_diffusers(sd: dict, prefix: str) -> tuple[dict, list[str]]:
    """`<prefix>text_model.X` -> `text_model.X` (canonical HF names, transformers 4 style).

    position_ids is a buffer the model recomputes; it is reported as unmatched so that the
    caller lists it with the other non-model keys.
    """
    out, unmatched = {}, []
    for key in sd:
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix):]
        if rest.endswith("position_ids") or not rest.startswith("text_model."):
            unmatched.append(key)
            continue
        out[rest] = sd[key]
    return out, unmatched


def hf_clip_to_ldm(sd: dict, prefix: str) -> dict:
    """Canonical HF CLIP-L names (with `text_model.`) -> single-file names."""
    return {prefix + k: v for k, v in sd.items() if k.startswith("text_model.")}


# -------------------------------------------------------------------------- OpenCLIP text
_OPENCLIP_LAYER = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
_OPENCLIP_TOP = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
}
# Keys of an OpenCLIP text tower that a CLIPTextModel has no place for.
OPENCLIP_EXTRA = ("logit_scale", "attn_mask")


def openclip_to_diffusers(sd: dict, prefix: str, with_projection: bool) -> tuple[dict, list[str]]:
    """OpenCLIP text tower -> canonical HF CLIP names.

    in_proj_weight [3C, C] holds q rows first, then k, then v. text_projection [C, P] is
    applied as x @ P, so the HF Linear weight is its transpose.
    """
    out, unmatched = {}, []
    for key in sd:
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix):]
        value = sd[key]
        if rest in _OPENCLIP_TOP:
            out[_OPENCLIP_TOP[rest]] = value
        elif rest == "text_projection" and with_projection:
            out["text_projection.weight"] = value.t().contiguous()
        elif rest.startswith("transformer.resblocks."):
            parts = rest.split(".")
            layer, inner = parts[2], ".".join(parts[3:])
            base = f"text_model.encoder.layers.{layer}."
            if inner in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = inner.rsplit("_", 1)[1]
                for name, chunk in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                    out[f"{base}self_attn.{name}.{kind}"] = chunk.contiguous()
                continue
            mod, _, leaf = inner.rpartition(".")
            if mod in _OPENCLIP_LAYER:
                out[f"{base}{_OPENCLIP_LAYER[mod]}.{leaf}"] = value
            else:
                unmatched.append(key)
        else:
            unmatched.append(key)
    return out, unmatched


def diffusers_to_openclip(sd: dict, prefix: str) -> dict:
    """Inverse of openclip_to_diffusers (q/k/v re-stacked into in_proj)."""
    out = {}
    inv_top = {v: k for k, v in _OPENCLIP_TOP.items()}
    inv_layer = {v: k for k, v in _OPENCLIP_LAYER.items()}
    qkv: dict = {}
    for key, value in sd.items():
        if key in inv_top:
            out[prefix + inv_top[key]] = value
        elif key == "text_projection.weight":
            out[prefix + "text_projection"] = value.t().contiguous()
        elif key.startswith("text_model.encoder.layers."):
            parts = key.split(".")
            layer, inner = parts[3], ".".join(parts[4:])
            mod, _, leaf = inner.rpartition(".")
            if mod in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                qkv.setdefault((layer, leaf), {})[mod.split(".")[1][0]] = value
            elif mod in inv_layer:
                out[f"{prefix}transformer.resblocks.{layer}.{inv_layer[mod]}.{leaf}"] = value
    for (layer, leaf), d in qkv.items():
        out[f"{prefix}transformer.resblocks.{layer}.attn.in_proj_{leaf}"] = torch.cat([d["q"], d["k"], d["v"]], 0)
    return out


# ------------------------------------------------------------------------ non-model keys
# Keys real single-file checkpoints carry that belong to no diffusers component. They are
# consumed silently (listed here explicitly); anything else left over is reported.
DDPM_BUFFERS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
    "posterior_mean_coef1", "posterior_mean_coef2", "logvar", "lvlb_weights",
)
# Marker keys ComfyUI writes into v-prediction / zero-terminal-SNR checkpoints.
MARKER_KEYS = ("v_pred", "ztsnr", "edm_vpred.sigma_max", "edm_vpred.sigma_min")


def is_non_model_key(key: str, family: str) -> bool:
    """True for keys that are known to carry no weights of the diffusers components."""
    if key in DDPM_BUFFERS or key in MARKER_KEYS or key.startswith("model_ema."):
        return True
    if key.endswith("embeddings.position_ids"):
        return True
    for prefix, layout in TEXT_PREFIXES[family]:
        if layout == "openclip" and key.startswith(prefix):
            rest = key[len(prefix):]
            if rest in OPENCLIP_EXTRA:
                return True
            # SD 2.x uses the penultimate hidden state; its projection is unused.
            if family == "sd2" and rest == "text_projection":
                return True
    return False
