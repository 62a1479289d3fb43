"""Family and component configs inferred from tensor names and shapes alone.

No yaml, no hub: every number of the diffusers configs is read off the shapes of a
single-file checkpoint (works for fine-tunes and for tiny test models alike). Inputs are
`{key: shape}` dicts, so a safetensors header is enough; no tensor is read.
"""
from __future__ import annotations

import re

from ..io.errors import CheckpointError
from .ckpt_keys import TEXT_PREFIXES, UNET_PREFIX, VAE_PREFIX

Shapes = dict  # {key: tuple[int, ...]}


def detect_family(shapes: Shapes) -> str:
    """'sd1' | 'sd2' | 'sdxl' from the text-encoder keys; a clear error for anything else."""
    if UNET_PREFIX + "input_blocks.0.0.weight" not in shapes:
        if any(k.startswith(("lora_unet_", "lora_te", "lycoris_")) or ".lora_" in k for k in shapes):
            raise CheckpointError("this file is a LoRA, not a checkpoint: load it with Load LoRA")
        sample = ", ".join(sorted(shapes)[:3]) or "no tensors"
        raise CheckpointError(
            f"unknown model family: no Stable Diffusion UNet keys ({UNET_PREFIX}...) in the file "
            f"(first keys: {sample})"
        )
    has = lambda p: any(k.startswith(p) for k in shapes)  # noqa: E731
    if has("conditioner.embedders.1.model.") and has("conditioner.embedders.0.transformer."):
        return "sdxl"
    if has("conditioner.embedders.0.model."):
        raise CheckpointError("unknown model family: SDXL refiner checkpoints are not supported (only SDXL base)")
    if has("cond_stage_model.model."):
        return "sd2"
    if has("cond_stage_model.transformer."):
        return "sd1"
    raise CheckpointError(
        "unknown model family: the file has a UNet but no text encoder of SD 1.x "
        "(cond_stage_model.transformer.), SD 2.x (cond_stage_model.model.) or SDXL (conditioner.embedders.)"
    )


def _indices(shapes: Shapes, pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in shapes for m in [rx.match(k)] if m})


def infer_unet_config(shapes: Shapes, family: str) -> dict:
    """UNet2DConditionModel config from the LDM UNet keys."""
    p = UNET_PREFIX
    conv_in = shapes[p + "input_blocks.0.0.weight"]  # [C0, in_channels, 3, 3]
    # Walk input_blocks: resnets (with optional attention) and downsamplers split the levels.
    levels: list[list[int]] = [[]]
    for n in _indices(shapes, re.escape(p) + r"input_blocks\.(\d+)\.")[1:]:
        if p + f"input_blocks.{n}.0.op.weight" in shapes:
            levels.append([])
        else:
            levels[-1].append(n)
    lpb = {len(lv) for lv in levels}
    if len(lpb) != 1:
        raise CheckpointError(f"unsupported UNet layout: levels with {sorted(lpb)} resnets each")
    layers_per_block = lpb.pop()
    block_out = [shapes[p + f"input_blocks.{lv[0]}.0.out_layers.3.weight"][0] for lv in levels]

    def depth(block: str) -> int:
        return len(_indices(shapes, re.escape(p + block) + r"\.transformer_blocks\.(\d+)\."))

    attn_depth = [depth(f"input_blocks.{lv[0]}.1") for lv in levels]
    has_attn = [d > 0 for d in attn_depth]
    first_attn = next((f"input_blocks.{lv[0]}.1" for lv, a in zip(levels, has_attn) if a), "middle_block.1")
    context_dim = shapes[p + first_attn + ".transformer_blocks.0.attn2.to_k.weight"][1]
    linear_proj = len(shapes[p + first_attn + ".proj_in.weight"]) == 2
    if family == "sd1":
        heads = 8  # SD 1.x: 8 heads at every level (diffusers' attention_head_dim quirk)
    else:
        heads = [max(1, c // 64) for c in block_out]  # SD 2.x / SDXL: 64 channels per head
    cfg = {
        "sample_size": {"sd1": 64, "sd2": 96, "sdxl": 128}[family],
        "in_channels": conv_in[1],
        "out_channels": shapes[p + "out.2.weight"][0],
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in has_attn],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(has_attn)],
        "block_out_channels": block_out,
        "layers_per_block": layers_per_block,
        "cross_attention_dim": context_dim,
        "attention_head_dim": heads,
        "use_linear_projection": linear_proj,
        "transformer_layers_per_block": [max(d, 1) for d in attn_depth],
    }
    if p + "label_emb.0.0.weight" in shapes:
        adm_in = shapes[p + "label_emb.0.0.weight"][1]
        pooled = _openclip_projection_dim(shapes, "conditioner.embedders.1.model.")
        if family != "sdxl" or pooled is None or (adm_in - pooled) % 6:
            raise CheckpointError(f"unsupported UNet: class embedding of width {adm_in} outside SDXL base")
        cfg.update(
            addition_embed_type="text_time",
            addition_time_embed_dim=(adm_in - pooled) // 6,  # 6 size/crop numbers, each embedded
            projection_class_embeddings_input_dim=adm_in,
        )
    return cfg


def infer_vae_config(shapes: Shapes, family: str) -> dict:
    p = VAE_PREFIX
    n_levels = len(_indices(shapes, re.escape(p) + r"encoder\.down\.(\d+)\."))
    lpb = len(_indices(shapes, re.escape(p) + r"encoder\.down\.0\.block\.(\d+)\."))
    if n_levels == 0 or lpb == 0:
        raise CheckpointError(f"the checkpoint has no VAE ({p}encoder.down...) keys")
    block_out = [shapes[p + f"encoder.down.{i}.block.0.conv2.weight"][0] for i in range(n_levels)]
    return {
        "in_channels": shapes[p + "encoder.conv_in.weight"][1],
        "out_channels": shapes[p + "decoder.conv_out.weight"][0],
        "down_block_types": ["DownEncoderBlock2D"] * n_levels,
        "up_block_types": ["UpDecoderBlock2D"] * n_levels,
        "block_out_channels": block_out,
        "layers_per_block": lpb,
        "latent_channels": shapes[p + "post_quant_conv.weight"][0],
        "sample_size": {"sd1": 512, "sd2": 768, "sdxl": 1024}[family],
        "scaling_factor": 0.13025 if family == "sdxl" else 0.18215,
    }


def _openclip_projection_dim(shapes: Shapes, prefix: str):
    proj = shapes.get(prefix + "text_projection")
    return proj[1] if proj is not None else None


def infer_text_configs(shapes: Shapes, family: str) -> list[dict]:
    """CLIPTextConfig kwargs for each text encoder of the family, in order."""
    configs = []
    for prefix, layout in TEXT_PREFIXES[family]:
        if layout == "hf":
            tm = prefix + "text_model."
            vocab, hidden = shapes[tm + "embeddings.token_embedding.weight"]
            max_pos = shapes[tm + "embeddings.position_embedding.weight"][0]
            layers = len(_indices(shapes, re.escape(tm) + r"encoder\.layers\.(\d+)\."))
            inter = shapes[tm + "encoder.layers.0.mlp.fc1.weight"][0]
            cfg = dict(hidden_act="quick_gelu", projection_dim=hidden)
        else:
            vocab, hidden = shapes[prefix + "token_embedding.weight"]
            max_pos = shapes[prefix + "positional_embedding"][0]
            layers = len(_indices(shapes, re.escape(prefix) + r"transformer\.resblocks\.(\d+)\."))
            inter = shapes[prefix + "transformer.resblocks.0.mlp.c_fc.weight"][0]
            proj = _openclip_projection_dim(shapes, prefix)
            cfg = dict(hidden_act="gelu", projection_dim=proj or hidden)
        cfg.update(
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=inter,
            num_hidden_layers=layers,
            num_attention_heads=max(1, hidden // 64),  # CLIP text towers use 64-wide heads
            max_position_embeddings=max_pos,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=1 if layout == "hf" else 0,
        )
        configs.append(cfg)
    return configs


def detect_prediction_type(shapes: Shapes, metadata: dict | None, family: str, norm_bias_std=None) -> str:
    """'v_prediction' or 'epsilon'.

    In order: the modelspec metadata, the marker keys ComfyUI writes (`v_pred`), and for SD 2.x
    ComfyUI's own heuristic (std of one LayerNorm bias > 0.09 in 768-v models), computed by the
    caller and passed as `norm_bias_std`.
    """
    meta = metadata or {}
    declared = str(meta.get("modelspec.prediction_type", "")).lower()
    if declared in ("v", "v_prediction", "v-prediction"):
        return "v_prediction"
    if declared in ("epsilon", "eps"):
        return "epsilon"
    if "v_pred" in shapes:
        return "v_prediction"
    if family == "sd2" and norm_bias_std is not None and norm_bias_std > 0.09:
        return "v_prediction"
    return "epsilon"


# The LayerNorm bias whose spread tells SD 2.x 768-v from 512-base (ComfyUI's heuristic).
SD2_V_PROBE = UNET_PREFIX + "output_blocks.11.1.transformer_blocks.0.norm1.bias"
