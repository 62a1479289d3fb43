"""A1111's seed fields <-> the A1111 Noise node (sampling/noise_a1111.py).

    RNG: CPU | NV         (A1111 writes it only when not its default, GPU)
    Variation seed: 123, Variation seed strength: 0.3, Seed resize from: 512x512, ENSD: 31337

Reading: every image gets A1111's noise; without an RNG field it was drawn on the GPU, taken
here as NV (A1111's own imitation of torch.randn on NVIDIA cards), and said so.
"""
from __future__ import annotations

from ..io.png_params import parse_size
from .workflow_ui import WorkflowError

SEED_FIELDS = ("RNG", "Variation seed", "Variation seed strength", "Seed resize from", "ENSD", "SGM noise multiplier")
NOISE_NODE = "LoraLabA1111Noise"


def _int(fields: dict, key: str) -> int:
    value = fields.get(key)
    if value in (None, ""):
        return 0
    try:
        return int(float(value))
    except ValueError:
        raise WorkflowError(f"A1111 parameters: {key}: {value!r} is not a number") from None


def noise_inputs(fields: dict, unmapped: dict) -> dict:
    """The A1111 Noise node's inputs for these parameters."""
    rng = fields.get("RNG") or "GPU"
    if rng == "GPU":
        unmapped["RNG"] = ("GPU (A1111's default, not written in the text): drawn as A1111's NV, its imitation of "
                           "torch.randn on NVIDIA cards; other GPUs drew other numbers")
        rng = "NV"
    elif rng not in ("CPU", "NV"):
        raise WorkflowError(f"A1111 parameters: RNG: {rng!r} is not one of GPU, CPU, NV")
    w = h = 0
    if fields.get("Seed resize from"):
        size = parse_size(fields["Seed resize from"].replace("-1", "0"))
        if size is None:
            raise WorkflowError(f"A1111 parameters: Seed resize from: {fields['Seed resize from']!r} is not WxH")
        w, h = size
    try:
        strength = float(fields.get("Variation seed strength") or 0)
    except ValueError:
        raise WorkflowError("A1111 parameters: Variation seed strength: "
                            f"{fields.get('Variation seed strength')!r} is not a number") from None
    return {"rng": rng, "variation_seed": _int(fields, "Variation seed"), "variation_strength": strength,
            "resize_seed_from_width": w, "resize_seed_from_height": h,
            "eta_noise_seed_delta": _int(fields, "ENSD"),
            "sgm_noise_multiplier": str(fields.get("SGM noise multiplier", "")).lower() == "true"}


def noise_fields(inputs: dict | None) -> dict:
    """The seed fields for an A1111 Noise node's (literal) inputs; {} without one."""
    if not inputs:
        return {}
    strength = inputs.get("variation_strength") or 0
    w, h = inputs.get("resize_seed_from_width") or 0, inputs.get("resize_seed_from_height") or 0
    return {"Variation seed": inputs.get("variation_seed") if strength else None,
            "Variation seed strength": strength or None,
            "Seed resize from": f"{w}x{h}" if w and h else None,
            "ENSD": inputs.get("eta_noise_seed_delta") or None,
            "RNG": inputs.get("rng"),
            "SGM noise multiplier": True if inputs.get("sgm_noise_multiplier") is True else None}
