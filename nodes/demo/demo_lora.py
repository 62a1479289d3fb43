"""The embedded demo LoRAs, trained by our own Train LoRA on the demo model (train_loras.py):

    lora-lab-demo-style.safetensors  "llstripes": the shape drawn in horizontal stripes of its
                                     colour and a pale tint (the base model only makes flat fills)
    lora-lab-demo-star.safetensors   "llstar": a five-pointed star, a shape the base never saw

Shipped in assets/ (fp16, kohya format with Train LoRA's ss_* metadata and a
modelspec.trigger_phrase) and copied into the loras folder on first use, SHA-256 checked (as
the demo checkpoint, demo.py). Also the demo dataset of the train_then_sample workflow: a new
colour ("llpurple", purple) the base model never drew.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ..io import paths
from ..io.errors import ModelPathError
from .demo import install_asset

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoLora:
    name: str
    sha256: str
    trigger: str
    concept: str  # what it adds, in words


STYLE_TRIGGER, CHARACTER_TRIGGER = "llstripes", "llstar"
DEMO_LORAS = {
    d.name: d for d in (
        DemoLora("lora-lab-demo-style.safetensors", "f45ff33babc1282659efb849304ccb67a4256c75f93b11391cbc9dea0b30a8f3", STYLE_TRIGGER, "striped fill"),
        DemoLora("lora-lab-demo-star.safetensors", "8cad8ee7701a26254308744ce9dc5ee7e19bd01a3127a0833f83fc51135e4fb5", CHARACTER_TRIGGER, "a star shape"),
    )
}
DEMO_LORA_NAMES = tuple(DEMO_LORAS)
DEMO_STYLE, DEMO_CHARACTER = DEMO_LORA_NAMES


def _existing(name: str) -> Path | None:
    try:
        return paths.resolve("loras", name)
    except ModelPathError:
        return None


def ensure_demo_lora(name: str = DEMO_STYLE, folder: Path | None = None) -> Path:
    """Path of demo LoRA `name` in `folder` / the loras folders, copied from the package's
    assets into `folder` (default: the first loras folder) if it is not there yet."""
    if name not in DEMO_LORAS:
        raise ValueError(f"{name!r} is not a demo LoRA; expected one of {DEMO_LORA_NAMES}")
    spec = DEMO_LORAS[name]
    if folder is None:
        found = _existing(name)
        if found is not None:
            folder = found.parent
        else:
            folder = paths.folders("loras")[0]
    return install_asset(name, spec.sha256, Path(folder) / name)


def ensure_demo_loras(folder: Path | None = None) -> list[Path]:
    return [ensure_demo_lora(n, folder) for n in DEMO_LORA_NAMES]


def ensure_if_demo(name: str) -> None:
    """Install `name` if it is a demo LoRA that is not there yet (call before resolving a LoRA name);
    with or without its extension, as LoRA names resolve."""
    if not isinstance(name, str):
        return
    full = name if name in DEMO_LORAS else name + ".safetensors"
    if full in DEMO_LORAS:
        ensure_demo_lora(full)


def with_demo_names(names: list[str]) -> list[str]:
    """A LoRA name list plus the demo LoRAs (installed on first use) that are not in it."""
    return list(names) + [n for n in DEMO_LORA_NAMES if n not in names]


def ensure_named(names) -> None:
    """Install every demo LoRA among `names` that is not there yet: the node/CLI edge calls this
    before it hands LoRA names to the core (which never writes demo files itself)."""
    for name in names:
        ensure_if_demo(name)


# ---------------------------------------------------------------------------- demo dataset
DEMO_DATASET = "lora-lab-demo-dataset"
NEW_COLOUR_TRIGGER = "llpurple"
NEW_COLOUR_KINDS = dict(colours=("purple",), backgrounds=("white", "yellow", "green"))


def ensure_demo_dataset(folder: Path) -> Path:
    """The train_then_sample dataset in `folder` (written once, deterministic): `5_llpurple/`
    with 12 64x64 pictures of purple shapes (a colour the demo model never drew) and captions
    "llpurple, a purple circle on a white background"."""
    from .shapes import write_kohya_folder

    return write_kohya_folder(folder, "5_llpurple", 12, seed=31, prefix=NEW_COLOUR_TRIGGER, **NEW_COLOUR_KINDS)
