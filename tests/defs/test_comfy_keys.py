"""lora/comfy_keys.py on the real key layouts of full-size SD 1.5 and SDXL (shared/reference):
every layer our KeyIndex targets has a ComfyUI key, each a different one, and the skeleton
built from ComfyUI's names has the shapes of the checkpoint."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lora_lab.nodes.lora import comfy_keys
from lora_lab.nodes.lora.lora_keys import Target
from lora_lab.nodes.lora.patcher import state_for
from lora_lab.nodes.model import ckpt_keys

REFERENCE = Path(__file__).resolve().parents[2].parent / "shared" / "reference"


def reference(name: str) -> dict:
    for root in (REFERENCE, Path("/work/shared/reference")):
        if (root / name).is_file():
            return {k: tuple(v[0]) for k, v in json.loads((root / name).read_text()).items()}
    pytest.skip(f"shared/reference/{name} not found")


def comfy_layout(ref: dict, family: str) -> tuple[dict, dict]:
    """ComfyUI's state-dict names of a checkpoint: UNet under diffusion_model., CLIP towers in
    HF layout under clip_l / clip_g .transformer. (OpenCLIP's in_proj split into q/k/v)."""
    unet = {k[len("model."):]: s for k, s in ref.items() if k.startswith("model.diffusion_model.")}
    clip = {}
    for _, comfy_pre, ldm_pre, layout in comfy_keys.COMFY_TEXT[family]:
        part = {k: torch.empty(s, device="meta") for k, s in ref.items() if k.startswith(ldm_pre)}
        if layout == "hf":
            hf = {k[len(ldm_pre):]: v for k, v in part.items() if not k.endswith("position_ids")}
        else:
            hf, _ = ckpt_keys.openclip_to_diffusers(part, ldm_pre, with_projection=True)
        clip.update({comfy_pre + k: tuple(v.shape) for k, v in hf.items()})
    return unet, clip


@pytest.mark.parametrize("family,name", [("sd1", "sd15_checkpoint_keys.json"), ("sdxl", "sdxl_checkpoint_keys.json")])
def test_every_target_has_its_own_comfy_key(family, name):
    unet, clip = comfy_layout(reference(name), family)
    h = comfy_keys.skeleton_from_comfy(unet, clip)
    assert h.family == family and comfy_keys.skeleton_from_comfy(unet, clip) is h  # cached
    st = state_for(h)
    keys = {**unet, **clip}
    seen = {}
    for (comp, mod), module in st.modules.items():
        if not hasattr(module, "weight") or module.weight is None:
            continue
        key = comfy_keys.comfy_key(family, st.index, Target(comp, mod), "weight")
        assert key in keys, (comp, mod, key)
        assert keys[key] == tuple(module.weight.shape) or comp == "unet" and len(keys[key]) != module.weight.ndim
        assert key not in seen, (key, seen.get(key), (comp, mod))
        seen[key] = (comp, mod)
    # every attention / MLP / conv weight of ComfyUI's model is reachable
    lin = {k for k in keys if k.endswith(".weight") and len(keys[k]) >= 2 and "embedding" not in k}
    assert lin - set(seen) == set()
    assert comfy_keys.is_text_key("clip_l.transformer.text_model.final_layer_norm.weight")
    assert not comfy_keys.is_text_key("diffusion_model.out.2.weight")


def test_family_without_clip_and_errors():
    unet, _ = comfy_layout(reference("sdxl_checkpoint_keys.json"), "sdxl")
    assert comfy_keys.family_from_shapes(unet, None) == "sdxl"
    h = comfy_keys.skeleton_from_comfy(unet, None)  # model-only: the family's full-size text towers
    assert [e.config.hidden_size for e in h.text_encoders] == [768, 1280]
    with pytest.raises(Exception, match="not a Stable Diffusion UNet"):
        comfy_keys.family_from_shapes({"diffusion_model.foo.weight": (1,)}, None)
    with pytest.raises(Exception, match="unsupported CLIP"):
        comfy_keys.family_from_shapes(unet, {"t5xxl.transformer.x.weight": (1, 1)})
