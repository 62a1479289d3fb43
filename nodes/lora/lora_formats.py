"""LoRA file formats: a table of key suffixes plus pure converters.

read_lora(path)  -> RawLora: the file's tensors grouped per layer name into Adapters (kohya
                    LoRA/LoCon, LyCORIS LoHa/LoKr/OFT/BOFT/GLoRA/full diff/norms/IA3, DoRA, diffusers and
                    PEFT names, A1111 legacy attention processors), plus the keys that fit no
                    adapter and the file's metadata. Cached by (path, size, mtime).
match(raw, index) -> Matched: {Target: (Adapter, ...)} for one model, plus the unmatched names.
Nothing here mutates its inputs.
"""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..io.byte_cache import ByteLRU, budget_from_env, tensor_bytes
from ..io.checks import check_finite
from ..io.errors import LoraLabError
from ..io.safetensors_io import TensorSource
from ..model.handle import FAMILY_LABELS
from .adapters import Adapter

log = logging.getLogger(__name__)

# (suffix, role). Longest suffixes first so ".lora_up.weight" wins over ".weight".
SUFFIXES = [
    (".lora_linear_layer.down.weight", "down"), (".lora_linear_layer.up.weight", "up"),
    (".lora_magnitude_vector.weight", "dora"), (".lora_magnitude_vector", "dora"),
    (".lora_down.weight", "down"), (".lora_up.weight", "up"), (".lora_mid.weight", "mid"),
    (".lora_up.bias", "up_bias"), (".lora_B.bias", "up_bias"),
    (".lora_A.weight", "down"), (".lora_B.weight", "up"),
    (".lora.down.weight", "down"), (".lora.up.weight", "up"),
    (".hada_w1_a", "w1a"), (".hada_w1_b", "w1b"), (".hada_w2_a", "w2a"), (".hada_w2_b", "w2b"),
    (".hada_t1", "t1"), (".hada_t2", "t2"),
    (".lokr_w1_a", "k_w1a"), (".lokr_w1_b", "k_w1b"), (".lokr_w2_a", "k_w2a"), (".lokr_w2_b", "k_w2b"),
    (".lokr_w1", "k_w1"), (".lokr_w2", "k_w2"), (".lokr_t2", "k_t2"),
    (".diff_b", "diff_b"), (".diff", "diff"), (".w_norm", "diff"), (".b_norm", "diff_b"),
    (".oft_blocks", "oft_blocks"), (".rescale", "rescale"),
    (".a1.weight", "g_a1"), (".a2.weight", "g_a2"), (".b1.weight", "g_b1"), (".b2.weight", "g_b2"),
    (".on_input", "on_input"), (".dora_scale", "dora"), (".alpha", "alpha"), (".scale", "scale"),
    (".down.weight", "down"), (".up.weight", "up"),
    (".weight", "ia3"),
]
# A1111 / old diffusers attention-processor names: "...attn1.processor.to_q_lora" -> "...attn1.to_q"
_PROCESSOR = re.compile(r"\.processor\.(to_q|to_k|to_v|to_out)_lora$")


def split_key(key: str) -> tuple[str, str] | None:
    for suffix, role in SUFFIXES:
        if key.endswith(suffix):
            base = key[: -len(suffix)]
            m = _PROCESSOR.search(base)
            if m:
                mod = m.group(1)
                base = base[: m.start()] + "." + ("to_out.0" if mod == "to_out" else mod)
            return base, role
    return None


@dataclass(frozen=True)
class RawLora:
    name: str
    adapters: dict  # layer name as written -> Adapter
    unknown_keys: tuple  # keys of no known adapter form
    metadata: dict
    family_hint: str | None  # the family the file was made for, when its shapes tell


def _adapter_from_group(g: dict, default_alpha: float | None) -> Adapter | None:
    """Build one Adapter from the tensors of one layer; None if the group is incomplete."""
    f = {k: v.float() for k, v in g.items() if isinstance(v, torch.Tensor) and k not in ("alpha", "scale")}
    alpha = float(g["alpha"]) if "alpha" in g else default_alpha
    extra = float(g["scale"]) if "scale" in g else 1.0
    common = dict(alpha=alpha, dora_scale=f.get("dora"), extra_scale=extra)
    if "up" in f and "down" in f:
        t = {"up": f["up"], "down": f["down"]}
        if "mid" in f:
            t["mid"] = f["mid"]
        return Adapter("lora", t, bias=f.get("up_bias"), **common)
    if all(k in f for k in ("w1a", "w1b", "w2a", "w2b")):
        t = {k: f[k] for k in ("w1a", "w1b", "w2a", "w2b", "t1", "t2") if k in f}
        return Adapter("loha", t, **common)
    if ("k_w1" in f or "k_w1a" in f) and ("k_w2" in f or "k_w2a" in f):
        t = {k[2:]: f[k] for k in ("k_w1", "k_w1a", "k_w1b", "k_w2", "k_w2a", "k_w2b", "k_t2") if k in f}
        return Adapter("lokr", t, **common)
    if "diff" in f or "diff_b" in f:
        return Adapter("diff", {"diff": f["diff"]} if "diff" in f else {}, bias=f.get("diff_b"), **common)
    if "oft_blocks" in f and f["oft_blocks"].ndim in (3, 4):  # LyCORIS OFT [k, b, b] / BOFT [m, k, b, b]
        t = {"blocks": f["oft_blocks"], **({"rescale": f["rescale"]} if "rescale" in f else {})}
        return Adapter("oft" if f["oft_blocks"].ndim == 3 else "boft", t, **common)
    if all(k in f for k in ("g_a1", "g_a2", "g_b1", "g_b2")):
        return Adapter("glora", {k[2:]: f[k] for k in ("g_a1", "g_a2", "g_b1", "g_b2")}, **common)
    if "ia3" in f and "on_input" in g:
        return Adapter("ia3", {"weight": f["ia3"]}, on_input=bool(g["on_input"].item()), **common)
    return None


def peft_default_alpha(metadata: dict) -> float | None:
    """PEFT/diffusers files may carry their adapter config (r, lora_alpha) as JSON metadata."""
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return None
    try:
        cfg = json.loads(raw)
    except json.JSONDecodeError:
        return None
    alpha = cfg.get("lora_alpha", cfg.get("unet.lora_alpha"))  # flat PEFT config, or diffusers' nested one
    return float(alpha) if alpha is not None else None


def guess_family(adapters: dict) -> str | None:
    """The family a LoRA was made for, from its names and its cross-attention widths."""
    names = list(adapters)
    if any(n.startswith(("lora_te2_", "text_encoder_2.")) for n in names):
        return "sdxl"
    for n, a in adapters.items():
        if a.kind == "lora" and re.search(r"attn2[._]to_k$", n):
            width = a.tensors["down"].shape[1]
            return {768: "sd1", 1024: "sd2", 2048: "sdxl"}.get(width)
    return None


def parse_state_dict(sd: dict, metadata: dict | None = None, name: str = "") -> RawLora:
    """Group a LoRA state dict into per-layer Adapters (pure: `sd` is not modified)."""
    metadata = dict(metadata or {})
    groups: dict[str, dict] = {}
    group_keys: dict[str, list] = {}
    unknown = []
    for key in sd:
        hit = split_key(key)
        if hit is None:
            unknown.append(key)
            continue
        base, role = hit
        groups.setdefault(base, {})[role] = sd[key]
        group_keys.setdefault(base, []).append(key)
    default_alpha = peft_default_alpha(metadata)
    adapters = {}
    for base, g in groups.items():
        a = _adapter_from_group(g, default_alpha)
        if a is None:
            # e.g. a ".weight" with no ".on_input": a plain weight, not an adapter
            unknown += group_keys[base]
            continue
        adapters[base] = a
    return RawLora(name, adapters, tuple(sorted(unknown)), metadata, guess_family(adapters))


# Default byte budget of the parsed-LoRA cache (fp32 adapter tensors): ~30 rank-32 SDXL LoRAs.
LORA_CACHE_BYTES = 2 << 30


def raw_lora_bytes(raw: RawLora) -> int:
    return tensor_bytes(t for a in raw.adapters.values()
                        for t in (*a.tensors.values(), a.bias, a.dora_scale))


class _Cache:
    """Parsed LoRA files by (path, size, mtime), bounded by bytes, least recently used out
    (budget: LORA_LAB_LORA_CACHE_MB or LORA_CACHE_BYTES)."""

    def __init__(self, budget_bytes: int | None = None):
        budget = budget_from_env("LORA_LAB_LORA_CACHE_MB", LORA_CACHE_BYTES) if budget_bytes is None else budget_bytes
        self.lru = ByteLRU("loras", budget, raw_lora_bytes)
        self.reads = 0

    def get(self, path: Path) -> RawLora:
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns)

        def load():
            self.reads += 1
            src = TensorSource(path)
            sd = {k: src.get(k) for k in src.keys()}
            for k, t in sd.items():  # a NaN/inf would reach the weights silently (a black image)
                check_finite(t, path.name, k)
            return parse_state_dict(sd, src.metadata, name=path.name)

        return self.lru.get_or_load(key, load)

    def clear(self) -> None:
        self.lru.clear()


LORA_CACHE = _Cache()


def read_lora(path: str | os.PathLike) -> RawLora:
    """Parse a LoRA file (cached by path, size and mtime: strength changes never re-read it)."""
    path = Path(path)
    if not path.exists():
        raise LoraLabError(f"{path}: file not found")
    if not path.is_file():
        raise LoraLabError(f"{path}: is a folder, not a LoRA file")
    return LORA_CACHE.get(path)


# ---------------------------------------------------------------------------- matching
@dataclass(frozen=True)
class Matched:
    adapters: dict  # Target -> tuple[Adapter, ...]
    unmatched: tuple  # layer names of the file that fit no layer of the model
    total: int  # layer groups in the file


class WrongFamilyError(LoraLabError):
    pass


def _expected_shape(a: Adapter) -> tuple | None:
    """ΔW's [out, in] size where the adapter tells it cheaply (LoRA only)."""
    if a.kind == "lora":
        return a.tensors["up"].shape[0], a.tensors["down"].shape[1]
    return None


def _flat(t: torch.Tensor) -> tuple:
    """(rows, elements per row) of a factor."""
    return t.shape[0], (t.numel() // t.shape[0]) if t.shape[0] else 0


def delta_size(a: Adapter) -> tuple | None:
    """(rows, elements) of ΔW for LoHa / LoKr / full diff, from the factors' shapes (None
    where tucker factors make it not worth it); a ValueError when the factors disagree."""
    t = a.tensors
    if a.kind == "diff" and "diff" in t:
        return t["diff"].shape[0], t["diff"].numel()
    if a.kind == "loha" and "t1" not in t:
        (o1, _), (_, i1) = _flat(t["w1a"]), _flat(t["w1b"])
        (o2, _), (_, i2) = _flat(t["w2a"]), _flat(t["w2b"])
        if (o1, i1) != (o2, i2):
            raise ValueError(f"LoHa factors of two sizes ({o1}x{i1} and {o2}x{i2})")
        return o1, o1 * i1
    if a.kind == "lokr" and "t2" not in t:
        sizes = []
        for w, wa, wb in (("w1", "w1a", "w1b"), ("w2", "w2a", "w2b")):
            sizes.append(_flat(t[w]) if w in t else (t[wa].shape[0], _flat(t[wb])[1]))
        (o1, i1), (o2, i2) = sizes
        return o1 * o2, o1 * i1 * o2 * i2
    return None


def match(raw: RawLora, index, modules: dict) -> Matched:
    """Resolve a parsed LoRA against a model's KeyIndex. `modules`: {(component, path): module}."""
    out: dict = {}
    unmatched = []
    mismatched = []
    for name, a in raw.adapters.items():
        targets = index.lookup(name)
        if not targets:
            unmatched.append(name)
            continue
        for t in targets:
            mod = modules[(t.component, t.module)]
            exp = _expected_shape(a)
            rows = (t.rows[1] - t.rows[0]) if t.rows else mod.weight.shape[0]
            if exp is not None and t.rows:
                rows = 3 * rows  # the adapter covers the fused q/k/v block
            if exp is not None and (exp[0] != rows or exp[1] != mod.weight.shape[1]):
                mismatched.append(f"{name}: LoRA {tuple(exp)} vs layer {tuple(mod.weight.shape[:2])}")
                continue
            if exp is None and not t.rows and a.kind in ("loha", "lokr", "diff"):
                try:
                    size = delta_size(a)
                except ValueError as e:
                    mismatched.append(f"{name}: {e}")
                    continue
                if size is not None and size != (mod.weight.shape[0], mod.weight.numel()):
                    mismatched.append(f"{name}: {a.kind} of {size[0]} rows / {size[1]} values vs layer "
                                      f"{tuple(mod.weight.shape)}")
                    continue
            out.setdefault(t, []).append(a)
    if raw.family_hint and raw.family_hint != index.family:
        raise WrongFamilyError(
            f"LoRA {raw.name!r} was made for {FAMILY_LABELS[raw.family_hint]}, but the model is "
            f"{FAMILY_LABELS[index.family]}"
        )
    if mismatched:
        raise WrongFamilyError(
            f"LoRA {raw.name!r} does not fit this {FAMILY_LABELS[index.family]} model "
            f"({len(mismatched)} layers of another size, e.g. {mismatched[0]})"
        )
    return Matched({t: tuple(v) for t, v in out.items()}, tuple(sorted(unmatched)), len(raw.adapters))
