"""What the node modules share: edge type names, the category, and two small helpers (a leaf of
defs/, so node modules import it and not each other)."""
from __future__ import annotations

MODEL = "LORA_LAB_MODEL"
VAE = "LORA_LAB_VAE"
CATEGORY = "LoRA Lab"
MAX_SEED = 0xFFFFFFFFFFFFFFFF


def lora_names() -> list:
    from ..demo.demo_lora import with_demo_names
    from ..io.paths import LORA_EXTENSIONS, list_names

    return with_demo_names(list_names("loras", LORA_EXTENSIONS))  # demo LoRAs are written on first use


def with_run_label(prefix: str) -> str:
    """The headless runner labels each run of a sweep; saved names carry that label."""
    try:
        from ..graph.executor import current_run_label
    except ImportError:
        return prefix
    label = current_run_label()
    return f"{prefix}_{label}" if label else prefix
