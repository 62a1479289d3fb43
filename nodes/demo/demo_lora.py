"""The embedded demo LoRAs: small kohya-format LoRAs for the demo checkpoint, written on first use.

Like the demo checkpoint (demo.py) they are deterministic (seeded tensors, fixed metadata), so
every machine writes the same tensors and metadata (safetensors orders its metadata map
arbitrarily, so not always the same header bytes), and they are real files in the loras
folder that any loader can read. They exist so the example workflows run end to end offline:

    lora-lab-demo-style.safetensors   attention layers of the UNet + text encoder, rank 4
    lora-lab-demo-detail.safetensors  feed-forward layers of the UNet, rank 8

Each carries kohya training metadata (tag frequencies, rank/alpha, base model) and a trigger
phrase, so the LoRA info panel and the trigger-word outputs have something to show.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ..io import paths
from ..io.errors import ModelPathError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoLora:
    name: str
    seed: int
    rank: int
    alpha: float
    unet_suffixes: tuple  # module-name suffixes of the UNet layers it targets
    te_suffixes: tuple  # ... of the text-encoder layers (empty: UNet only)
    trigger: str
    tags: dict  # ss_tag_frequency: {dataset folder: {tag: count}}
    scale: float = 0.35  # std of the up/down entries: big enough to change the demo's images


ATTN = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
        "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0")
TE_ATTN = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj")

DEMO_LORAS = {
    d.name: d for d in (
        DemoLora("lora-lab-demo-style.safetensors", 7001, 4, 2.0, ATTN, TE_ATTN, "llstyle watercolor",
                 {"10_llstyle": {"llstyle": 24, "watercolor": 18, "soft light": 9, "paper texture": 4}}),
        DemoLora("lora-lab-demo-detail.safetensors", 7002, 8, 8.0, ("ff.net.0.proj", "ff.net.2"), (),
                 "lldetail", {"5_lldetail": {"lldetail": 12, "intricate": 10, "sharp focus": 6}}),
    )
}
DEMO_LORA_NAMES = tuple(DEMO_LORAS)
DEMO_STYLE, DEMO_DETAIL = DEMO_LORA_NAMES


def _demo_modules():
    """(unet, text encoder) of the demo checkpoint's layout on the meta device: names and shapes only."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ..model.tiny_models import text_configs, unet_config

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config("sd1"))
        te = CLIPTextModel(CLIPTextConfig(**text_configs("sd1")[0]))
    return unet, te


def build_state_dict(spec: DemoLora) -> dict:
    """The kohya state dict of one demo LoRA: lora_unet_* / lora_te_* down, up, alpha."""
    unet, te = _demo_modules()
    g = torch.Generator().manual_seed(spec.seed)
    sd = {}
    layers = [("lora_unet_", n, m) for n, m in unet.named_modules() if n.endswith(spec.unet_suffixes)]
    if spec.te_suffixes:
        for n, m in te.named_modules():
            if n.endswith(spec.te_suffixes):
                full = n if n.startswith("text_model.") else "text_model." + n
                layers.append(("lora_te_", full, m))
    for prefix, name, mod in layers:
        out_f, in_f = mod.weight.shape[:2]  # Linear [out, in]
        base = prefix + name.replace(".", "_")
        sd[base + ".lora_down.weight"] = torch.randn((spec.rank, in_f), generator=g) * spec.scale
        sd[base + ".lora_up.weight"] = torch.randn((out_f, spec.rank), generator=g) * spec.scale
        sd[base + ".alpha"] = torch.tensor(float(spec.alpha))
    return sd


def metadata_for(spec: DemoLora) -> dict:
    stem = Path(spec.name).stem
    return {
        "ss_network_module": "networks.lora", "ss_network_dim": str(spec.rank),
        "ss_network_alpha": str(spec.alpha), "ss_base_model_version": "sd_v1",
        "ss_output_name": stem, "ss_sd_model_name": "lora-lab-demo-sd15.safetensors",
        "ss_tag_frequency": json.dumps(spec.tags, sort_keys=True),
        "ss_training_comment": "LoRA Lab demo: seeded random weights for the demo checkpoint",
        "modelspec.sai_model_spec": "1.0.0", "modelspec.architecture": "stable-diffusion-v1/lora",
        "modelspec.title": f"LoRA Lab demo ({stem})", "modelspec.trigger_phrase": spec.trigger,
    }


def _existing(name: str) -> Path | None:
    try:
        return paths.resolve("loras", name)
    except ModelPathError:
        return None


def ensure_demo_lora(name: str = DEMO_STYLE, folder: Path | None = None) -> Path:
    """Path of demo LoRA `name`, writing it (atomically) into `folder` / the first loras folder if
    no loras folder has it yet."""
    if name not in DEMO_LORAS:
        raise ValueError(f"{name!r} is not a demo LoRA; expected one of {DEMO_LORA_NAMES}")
    if folder is None:
        found = _existing(name)
        if found is not None:
            return found
        folder = paths.folders("loras")[0]
    target = Path(folder) / name
    if target.exists():
        return target
    from ..io.safetensors_write import save_safetensors

    spec = DEMO_LORAS[name]
    log.info("writing the demo LoRA to %s", target)
    try:
        save_safetensors(build_state_dict(spec), target, metadata=metadata_for(spec))
    except FileExistsError:  # another process wrote it meanwhile: same content
        pass
    return target


def ensure_demo_loras(folder: Path | None = None) -> list[Path]:
    return [ensure_demo_lora(n, folder) for n in DEMO_LORA_NAMES]


def ensure_if_demo(name: str) -> None:
    """Write `name` if it is a demo LoRA that is not there yet (call before resolving a LoRA name)."""
    if name in DEMO_LORAS:
        ensure_demo_lora(name)


def ensure_named(names) -> None:
    """Write every demo LoRA among `names` that is not there yet: the node/CLI edge calls this
    before it hands LoRA names to the core (which never writes demo files itself)."""
    for name in names:
        ensure_if_demo(name)


def with_demo_names(names: list[str]) -> list[str]:
    """A LoRA name list plus the demo LoRAs (written on first use) that are not in it."""
    return list(names) + [n for n in DEMO_LORA_NAMES if n not in names]


# ---------------------------------------------------------------------------- demo dataset
DEMO_DATASET = "lora-lab-demo-dataset"
_SHAPES = (("red", (200, 40, 40)), ("blue", (40, 90, 200)), ("green", (40, 160, 80)), ("yellow", (220, 180, 40)))


def ensure_demo_dataset(folder: Path) -> Path:
    """A tiny kohya-layout training set in `folder` (written once): `5_llshape/` with four 64×64
    pictures of coloured circles and their `.txt` captions ("llshape, a red circle", ...)."""
    from PIL import Image, ImageDraw

    sub = Path(folder) / "5_llshape"
    sub.mkdir(parents=True, exist_ok=True)
    for i, (colour, rgb) in enumerate(_SHAPES):
        image, caption = sub / f"{i}_{colour}.png", sub / f"{i}_{colour}.txt"
        if not image.exists():
            im = Image.new("RGB", (64, 64), (240, 235, 220))
            ImageDraw.Draw(im).ellipse([8 + 4 * i, 8, 56 - 4 * i, 56], fill=rgb)
            tmp = image.with_name(f".{image.name}.tmp")
            im.save(tmp, format="PNG")
            tmp.replace(image)
        if not caption.exists():
            caption.write_text(f"llshape, a {colour} circle\n", encoding="utf-8")
    return Path(folder)
