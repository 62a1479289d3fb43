"""Where LoRA keys point: an index from every name a LoRA file may use for a layer to the
layer of our diffusers components.

Names covered, for each Linear / Conv2d (and norm) layer:
  kohya, diffusers paths      lora_unet_down_blocks_0_attentions_0_proj_in
  kohya, LDM / sgm paths      lora_unet_input_blocks_1_1_proj_in
  diffusers / PEFT dotted     unet.down_blocks.0.attentions.0.proj_in, or without `unet.`
  LDM dotted                  diffusion_model.input_blocks.1.1.proj_in (ComfyUI-style)
  text encoders (kohya)       lora_te_text_model_encoder_layers_0_self_attn_q_proj (SD 1.x / 2.x),
                              lora_te1_… / lora_te2_… (SDXL)
  text encoders (diffusers)   text_encoder.text_model.encoder…, text_encoder_2.…, and the
                              flattened transformers-5 names text_encoder.encoder.layers…
  OpenCLIP (SD 2.x, SDXL te2) …transformer.resblocks.N.attn.in_proj (q/k/v rows), .mlp.c_fc, …,
                              flat too: lora_te_transformer_resblocks_N_attn_in_proj (SD 2.x)
  other prefixes              lycoris_<flat diffusers path> (SimpleTuner), base_model.model.<path>
                              (PEFT PeftModel), see _PREFIX_ALIASES
Targets are (component, module path) with component "unet", "te1" or "te2" and the path as
the module is named in our models (canonical HF names with `text_model.` for CLIP).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..model import ckpt_keys

LAYER_TYPES = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.GroupNorm, torch.nn.LayerNorm)


@dataclass(frozen=True)
class Target:
    component: str  # "unet" | "te1" | "te2"
    module: str  # module path inside that component (canonical names)
    rows: tuple | None = None  # (start, stop) when the LoRA addresses a fused parent (in_proj)


def _flat(name: str) -> str:
    return name.replace(".", "_")


def canonical_te_name(model, name: str) -> str:
    """Module names of transformers-5 flattened CLIPTextModel get the `text_model.` prefix back."""
    if hasattr(model, "text_model") or name.startswith("text_model."):
        return name
    return "text_model." + name


_OPENCLIP_MODS = {"self_attn.out_proj": "attn.out_proj", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                  "layer_norm1": "ln_1", "layer_norm2": "ln_2"}


class KeyIndex:
    """name (as written in a LoRA file, without the adapter suffix) -> [Target]."""

    def __init__(self, handle):
        self.family = handle.family
        self.names: dict[str, list[Target]] = {}
        self.ldm_unet: dict[str, str] = {}  # diffusers path -> LDM path (for block weights)
        self._add_unet(handle.unet)
        te_prefixes = {
            "sd1": [("te1", ["lora_te_", "lora_te1_"], ["text_encoder."], "cond_stage_model.transformer.")],
            "sd2": [("te1", ["lora_te_", "lora_te1_"], ["text_encoder."], "cond_stage_model.model.")],
            "sdxl": [("te1", ["lora_te1_"], ["text_encoder."], "conditioner.embedders.0.transformer."),
                     ("te2", ["lora_te2_"], ["text_encoder_2."], "conditioner.embedders.1.model.")],
        }[self.family]
        for model, (comp, flat_pre, dot_pre, ldm_pre) in zip(handle.text_encoders, te_prefixes):
            self._add_text(model, comp, flat_pre, dot_pre, ldm_pre, openclip=(ldm_pre.endswith("model.")))

    def _put(self, name: str, target: Target) -> None:
        lst = self.names.setdefault(name, [])
        if target not in lst:
            lst.append(target)

    def _add_unet(self, unet) -> None:
        mods = [n for n, m in unet.named_modules() if isinstance(m, LAYER_TYPES)]
        lookup = ckpt_keys.block_lookup(ckpt_keys.unet_block_pairs(dict(unet.config)), ldm_side=False)
        for m in mods:
            t = Target("unet", m)
            for name in (_flat("lora_unet_" + m), "unet." + m, m):
                self._put(name, t)
            hit = ckpt_keys.translate(m + ".weight", lookup, to_diffusers=False)
            if hit is not None:
                ldm = hit[0][: -len(".weight")]
                self.ldm_unet[m] = ldm
                for name in (_flat("lora_unet_" + ldm), "diffusion_model." + ldm, "model.diffusion_model." + ldm):
                    self._put(name, t)

    def _add_text(self, model, comp, flat_pre, dot_pre, ldm_pre, openclip: bool) -> None:
        for raw, mod in model.named_modules():
            if not isinstance(mod, LAYER_TYPES):
                continue
            name = canonical_te_name(model, raw)
            t = Target(comp, name)
            short = name.removeprefix("text_model.")
            for p in flat_pre:
                self._put(_flat(p + name), t)
            for p in dot_pre:
                self._put(p + name, t)
                self._put(p + short, t)  # transformers 5 flattened names
            if not openclip:
                self._put(ldm_pre + name, t)
                self._put(_flat("lora_" + ldm_pre + name), t)
                continue
            # OpenCLIP names of the same layers (SD 2.x, SDXL te2 in their original layout).
            if short.startswith("encoder.layers."):
                parts = short.split(".")
                layer, inner = parts[2], ".".join(parts[3:])
                if inner in _OPENCLIP_MODS:
                    oc = f"transformer.resblocks.{layer}.{_OPENCLIP_MODS[inner]}"
                    for n in (ldm_pre + oc, *(_flat(p + oc) for p in flat_pre)):
                        self._put(n, t)
                elif inner in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                    width = mod.weight.shape[0]
                    i = "qkv".index(inner.split(".")[1][0])
                    oc = f"transformer.resblocks.{layer}.attn.in_proj"
                    for n in (ldm_pre + oc, *(_flat(p + oc) for p in flat_pre)):
                        self._put(n, Target(comp, name, rows=(i * width, (i + 1) * width)))

    def lookup(self, name: str) -> list[Target]:
        hit = self.names.get(name)
        if hit:
            return hit
        for prefix, instead in _PREFIX_ALIASES:
            if name.startswith(prefix):
                rest = name[len(prefix):]
                for alt in instead:
                    hit = self.names.get(alt + rest)
                    if hit:
                        return hit
        return []


# Other spellings of the same names: SimpleTuner's LyCORIS files (`lycoris_` + the flat
# diffusers path, as ComfyUI maps them) and PEFT's PeftModel state dicts (`base_model.model.`,
# or `unet.base_model.model.` from the old reference script) around diffusers paths.
_PREFIX_ALIASES = (
    ("lycoris_", ("lora_unet_",)),
    ("unet.base_model.model.", ("",)),
    ("text_encoder.base_model.model.", ("text_encoder.",)),
    ("text_encoder_2.base_model.model.", ("text_encoder_2.",)),
    ("base_model.model.", ("", "text_encoder.")),
)


def kohya_name(family: str, index, comp: str, module: str) -> str:
    """kohya's layer name for a module of our components (see the module docstring)."""
    if comp == "unet":
        path = index.ldm_unet.get(module, module) if family == "sdxl" else module
        return "lora_unet_" + path.replace(".", "_")
    prefix = f"lora_{comp}_" if family == "sdxl" else "lora_te_"
    return prefix + module.replace(".", "_")
