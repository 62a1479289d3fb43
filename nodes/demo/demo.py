"""The embedded demo model: a tiny SD 1.5-layout checkpoint the pack writes on first use.

Deterministic (seeded weights, fixed metadata), so every machine writes the same bytes; a
real single-file checkpoint in the checkpoints folder that any loader can read. Its images
are abstract patterns (the weights are random): it exists to run graphs end to end offline.
"""
from __future__ import annotations

import logging
from pathlib import Path

from ..io import paths

log = logging.getLogger(__name__)

DEMO_NAME = "lora-lab-demo-sd15.safetensors"
DEMO_SEED = 20261128


def ensure_demo_checkpoint(folder: Path | None = None) -> Path:
    """Path of the demo checkpoint, writing it (atomically) if it is not there yet."""
    folder = Path(folder) if folder is not None else paths.folders("checkpoints")[0]
    target = folder / DEMO_NAME
    if target.exists():
        return target
    from ..model.checkpoint import tokenizers_for
    from ..model.checkpoint_save import save_single_file
    from ..model.handle import ModelHandle
    from ..model.tiny_models import build_components

    log.info("writing the demo checkpoint to %s", target)
    unet, vae, encoders = build_components("sd1", seed=DEMO_SEED)
    handle = ModelHandle("sd1", "epsilon", unet, vae, encoders, tokenizers_for("sd1"), source=DEMO_NAME)
    meta = {"modelspec.title": "LoRA Lab demo (tiny SD 1.5 layout, random weights)",
            "modelspec.architecture": "stable-diffusion-v1", "modelspec.sai_model_spec": "1.0.0"}
    try:
        save_single_file(target, handle, metadata=meta)
    except FileExistsError:  # another process wrote it meanwhile: same bytes
        pass
    return target
