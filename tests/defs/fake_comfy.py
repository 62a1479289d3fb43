"""A small stand-in for the part of ComfyUI our MODEL/CLIP nodes touch (written for these tests).

- `comfy.weight_adapter.base.WeightAdapterBase`: the base class ComfyUI's calculate_weight
  dispatches on.
- FakePatcher: ModelPatcher's `clone()` (patch lists copied, weights shared) and
  `add_patches(patches, strength_patch, strength_model)` (keys not in the model's state dict
  are left out of the returned list), and `patched_state_dict()`, which does what
  ModelPatcher.patch_weight_to_device + comfy.lora.calculate_weight do for weight-adapter
  patches: an fp32 copy of the weight, each patch's calculate_weight in order, then the
  result rounded to the weight's dtype.
- comfy_objects(handle): a MODEL / CLIP pair holding the tiny handle's weights under
  ComfyUI's key names (diffusion_model.<LDM>, clip_l/clip_h/clip_g.transformer.<HF names>).
"""
from __future__ import annotations

import sys
import types

import torch
from lora_lab.nodes.lora.comfy_keys import COMFY_TEXT
from lora_lab.nodes.model import checkpoint_save


class WeightAdapterBase:
    name: str
    loaded_keys: set
    weights: list

    def calculate_weight(self, weight, key, strength, strength_model, offset, function,
                         intermediate_dtype=torch.float32, original_weight=None):
        raise NotImplementedError


def install(monkeypatch) -> None:
    """Make `import comfy.weight_adapter.base` / `comfy.model_patcher` find the stand-in."""
    pkg = types.ModuleType("comfy")
    pkg.__path__ = []
    wa = types.ModuleType("comfy.weight_adapter")
    wa.__path__ = []
    base = types.ModuleType("comfy.weight_adapter.base")
    base.WeightAdapterBase = WeightAdapterBase
    mp = types.ModuleType("comfy.model_patcher")
    mp.ModelPatcher = FakePatcher
    for name, mod in (("comfy", pkg), ("comfy.weight_adapter", wa), ("comfy.weight_adapter.base", base),
                      ("comfy.model_patcher", mp)):
        monkeypatch.setitem(sys.modules, name, mod)


def module_of(sd: dict) -> torch.nn.Module:
    """A module tree whose state dict is `sd` (names split at the dots)."""
    root = torch.nn.Module()
    for key, value in sd.items():
        *path, leaf = key.split(".")
        m = root
        for p in path:
            if not hasattr(m, p):
                m.add_module(p, torch.nn.Module())
            m = getattr(m, p)
        m.register_parameter(leaf, torch.nn.Parameter(value.clone(), requires_grad=False))
    return root


class FakePatcher:
    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.patches: dict = {}

    def clone(self):
        n = FakePatcher(self.model)
        n.patches = {k: list(v) for k, v in self.patches.items()}
        return n

    def add_patches(self, patches, strength_patch=1.0, strength_model=1.0):
        sd = self.model.state_dict()
        added = []
        for k, v in patches.items():
            if k in sd:
                self.patches.setdefault(k, []).append((strength_patch, v, strength_model, None, None))
                added.append(k)
        return added

    def patched_state_dict(self) -> dict:
        out = {}
        for k, w in self.model.state_dict().items():
            if k not in self.patches:
                out[k] = w
                continue
            t = w.to(torch.float32, copy=True)
            for strength, v, strength_model, offset, function in self.patches[k]:
                if strength_model != 1.0:
                    t *= strength_model
                assert isinstance(v, WeightAdapterBase), type(v)
                t = v.calculate_weight(t, k, strength, strength_model, offset, function, torch.float32, None)
            out[k] = t.to(w.dtype)
        return out


class FakeModel(FakePatcher):
    """MODEL: ModelPatcher whose .model is a BaseModel-like module with .diffusion_model."""


class FakeClip:
    def __init__(self, cond_stage_model):
        self.cond_stage_model = cond_stage_model
        self.patcher = FakePatcher(cond_stage_model)

    def clone(self):
        n = FakeClip(self.cond_stage_model)
        n.patcher = self.patcher.clone()
        return n

    def add_patches(self, patches, strength_patch=1.0, strength_model=1.0):
        return self.patcher.add_patches(patches, strength_patch, strength_model)


def comfy_state_dicts(handle) -> tuple[dict, dict]:
    """(UNet, CLIP) state dicts of a handle under ComfyUI's names."""
    ldm = checkpoint_save.ldm_state_dict(handle.family, handle.unet, handle.vae, handle.text_encoders)
    unet = {k[len("model."):]: v for k, v in ldm.items() if k.startswith("model.diffusion_model.")}
    clip = {}
    for (comp, comfy_pre, _, _), enc in zip(COMFY_TEXT[handle.family], handle.text_encoders):
        for k, v in checkpoint_save.canonical_clip_state_dict(enc).items():
            clip[comfy_pre + k] = v
    return unet, clip


def comfy_objects(handle, dtype=None):
    unet, clip = comfy_state_dicts(handle)
    if dtype is not None:
        unet = {k: v.to(dtype) for k, v in unet.items()}
        clip = {k: v.to(dtype) for k, v in clip.items()}
    return FakeModel(module_of(unet)), FakeClip(module_of(clip))
