"""Per-block LoRA multipliers in the syntax of A1111's LoRA Block Weight extension (LBW).

A vector is a preset name or comma-separated numbers, one per block:
  SD 1.x / 2.x: 17 values  BASE, IN01 IN02 IN04 IN05 IN07 IN08, MID, OUT03 … OUT11
                26 values  BASE, IN00 … IN11, MID, OUT00 … OUT11   (for LoCon layers too)
  SDXL:         12 values  BASE, IN04 IN05 IN07 IN08, MID, OUT00 … OUT05
                20 values  BASE, IN00 … IN08, MID, OUT00 … OUT08
BASE covers the text encoders and the UNet layers outside the numbered blocks (time
embedding, conv_in, conv_out). In the short forms, blocks that hold no attention layers are
not listed; layers there keep multiplier 1.
"""
from __future__ import annotations

BLOCKS = {
    ("sd", 17): ["BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "MID",
                 "OUT03", "OUT04", "OUT05", "OUT06", "OUT07", "OUT08", "OUT09", "OUT10", "OUT11"],
    ("sd", 26): ["BASE"] + [f"IN{i:02}" for i in range(12)] + ["MID"] + [f"OUT{i:02}" for i in range(12)],
    ("sdxl", 12): ["BASE", "IN04", "IN05", "IN07", "IN08", "MID"] + [f"OUT{i:02}" for i in range(6)],
    ("sdxl", 20): ["BASE"] + [f"IN{i:02}" for i in range(9)] + ["MID"] + [f"OUT{i:02}" for i in range(9)],
}

# SD presets: the LBW extension's defaults (DEF_WEIGHT_PRESET in scripts/lora_block_weight.py),
# value for value. The extension ships no SDXL presets; ours follow the same block groups.
PRESETS = {
    "sd": {
        "ALL": "1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1",
        "NONE": "0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0",
        "INS": "1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0",
        "IND": "1,0,0,0,1,1,1,0,0,0,0,0,0,0,0,0,0",
        "INALL": "1,1,1,1,1,1,1,0,0,0,0,0,0,0,0,0,0",
        "MIDD": "1,0,0,0,1,1,1,1,1,1,1,1,0,0,0,0,0",
        "OUTD": "1,0,0,0,0,0,0,0,1,1,1,1,0,0,0,0,0",
        "OUTS": "1,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1",
        "OUTALL": "1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1",
        "ALL0.5": ",".join(["0.5"] * 17),
    },
    "sdxl": {
        "ALL": "1,1,1,1,1,1,1,1,1,1,1,1",
        "NONE": "0,0,0,0,0,0,0,0,0,0,0,0",
        "INALL": "1,1,1,1,1,0,0,0,0,0,0,0",
        "MIDD": "1,0,0,0,0,1,0,0,0,0,0,0",
        "OUTALL": "1,0,0,0,0,0,1,1,1,1,1,1",
        "ALL0.5": ",".join(["0.5"] * 12),
    },
}


def _group(family: str) -> str:
    return "sdxl" if family == "sdxl" else "sd"


def parse_block_weights(text: str, family: str) -> tuple | None:
    """A vector (preset or numbers) -> tuple of (block name, multiplier); None for empty text."""
    text = (text or "").strip()
    if not text:
        return None
    group = _group(family)
    preset = PRESETS[group].get(text.upper())
    if preset is not None:
        text = preset
    try:
        values = [float(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise ValueError(
            f"block weights {text!r}: expected a preset ({', '.join(PRESETS[group])}) or comma-separated numbers"
        ) from None
    names = BLOCKS.get((group, len(values)))
    if names is None:
        sizes = sorted(n for g, n in BLOCKS if g == group)
        raise ValueError(f"block weights {text!r}: {len(values)} values; {family} takes {' or '.join(map(str, sizes))}")
    return tuple(zip(names, values))


def block_of(ldm_path: str) -> str:
    """The LBW block of a UNet layer from its LDM path ('input_blocks.4.1...' -> 'IN04')."""
    parts = ldm_path.split(".")
    if parts[0] == "input_blocks" and len(parts) > 1:
        return f"IN{int(parts[1]):02}"
    if parts[0] == "output_blocks" and len(parts) > 1:
        return f"OUT{int(parts[1]):02}"
    if parts[0] == "middle_block":
        return "MID"
    return "BASE"


def block_multiplier(weights: tuple, ldm_path: str, family: str) -> float:
    """Multiplier for a UNet layer; blocks the vector does not list keep 1."""
    block = block_of(ldm_path)
    for name, value in weights:
        if name == block:
            return value
    return 1.0


def text_multiplier(weights: tuple | None) -> float:
    """BASE applies to the text encoders."""
    if not weights:
        return 1.0
    return dict(weights).get("BASE", 1.0)
