"""Applying a handle's patch set to the shared base modules, reversibly and bit-exactly.

Handles are immutable and share one set of base modules; right before a handle's model is
used, `activate(handle)` makes the module weights equal to "base + that handle's patches".
Per base model a PatchState keeps the original of every touched tensor and what is applied
to each; switching stacks rewrites only the tensors whose adapters or strengths differ, and
every rewrite starts from the kept original, so A -> B gives exactly the weights B gives on
the untouched base, and restoring copies the original back bit for bit.

Math is fp32 (adapters.patched_weight); results are stored in the model's dtype. Adapter
tensors are read to the CPU; for a model on another device (a GPU) they are moved there once
and kept while their LoRA is applied.
"""
from __future__ import annotations

import dataclasses
import logging
import weakref
from dataclasses import dataclass, field

import torch

from .adapters import (
    Adapter,
    is_plain_lora,
    patched_bias,
    patched_weight,
)
from .chain_threads import plain_lora_chains
from .lora_formats import Matched, RawLora, match
from .lora_keys import LAYER_TYPES, KeyIndex, Target, canonical_te_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoraPatch:
    """One LoRA in a handle's stack."""

    name: str
    raw: RawLora = field(repr=False)
    strength_unet: float = 1.0
    strength_text: float = 1.0
    block_weights: tuple | None = None  # LBW multipliers, see block_weights.py
    file_hash: str = ""


class PatchState:
    """What is applied to one base model's modules (kept per base UNet, weakly)."""

    def __init__(self, handle):
        self.index = KeyIndex(handle)
        self.modules = {}
        comps = {"unet": handle.unet, "te1": handle.text_encoders[0]}
        if len(handle.text_encoders) > 1:
            comps["te2"] = handle.text_encoders[1]
        for comp, model in comps.items():
            for raw_name, mod in model.named_modules():
                if isinstance(mod, LAYER_TYPES):
                    name = raw_name if comp == "unet" else canonical_te_name(model, raw_name)
                    self.modules[(comp, name)] = mod
        self.originals: dict = {}  # (comp, module, "weight"|"bias") -> original tensor
        self.applied: dict = {}  # same key -> signature of what is applied
        # Buffers of restored tensors, reused by the next apply (extra memory stays at most the
        # touched weights); release() frees them.
        self.spare: dict = {}
        self._matches: dict = {}  # id(raw) -> (raw, Matched)
        self._on_device: dict = {}  # (id(adapter), device) -> (adapter, its copy on that device)

    def on_device(self, a: Adapter, device: torch.device) -> Adapter:
        """`a` with its tensors on `device` (a itself when they are there already)."""
        if device.type == "cpu":
            return a
        hit = self._on_device.get((id(a), device))
        if hit is None or hit[0] is not a:
            hit = (a, adapter_to(a, device))
            self._on_device[(id(a), device)] = hit
        return hit[1]

    def keep_on_device(self, live: set) -> None:
        """Drop the device copies of adapters no longer applied (ids not in `live`)."""
        self._on_device = {k: v for k, v in self._on_device.items() if k[0] in live}

    def matched(self, raw: RawLora) -> Matched:
        hit = self._matches.get(id(raw))
        if hit is None or hit[0] is not raw:
            hit = (raw, match(raw, self.index, self.modules))
            self._matches[id(raw)] = hit
        return hit[1]


# base UNet -> first text encoder -> PatchState (weakly): handles made by merging CLIPs share the
# UNet but carry other text encoders, and merged MODELs carry another UNet with the same ones.
_STATES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def state_for(handle) -> PatchState:
    per_unet = _STATES.get(handle.unet)
    if per_unet is None:
        per_unet = weakref.WeakKeyDictionary()
        _STATES[handle.unet] = per_unet
    st = per_unet.get(handle.text_encoders[0])
    if st is None:
        st = PatchState(handle)
        per_unet[handle.text_encoders[0]] = st
    return st


def plan(handle) -> dict:
    """{(component, module, param): ((adapter, strength, rows), ...)} for the handle's patches."""
    from .block_weights import block_multiplier, text_multiplier

    st = state_for(handle)
    out: dict = {}
    for p in handle.patches:
        m = st.matched(p.raw)
        for t, adapters in m.adapters.items():
            if t.component == "unet":
                s = p.strength_unet
                if p.block_weights is not None:
                    s *= block_multiplier(p.block_weights, st.index.ldm_unet.get(t.module, ""), handle.family)
            else:
                s = p.strength_text * text_multiplier(p.block_weights)
            if s == 0:
                continue
            for a in adapters:
                if a.kind != "diff" or "diff" in a.tensors:
                    out.setdefault((t.component, t.module, "weight"), []).append((a, float(s), t.rows))
                if a.bias is not None:
                    out.setdefault((t.component, t.module, "bias"), []).append((a, float(s), t.rows))
    return {k: tuple(v) for k, v in out.items()}


def _same(sig_a, sig_b) -> bool:
    if sig_a is None or sig_b is None or len(sig_a) != len(sig_b):
        return sig_a is sig_b
    return all(a is b and sa == sb and ra == rb for (a, sa, ra), (b, sb, rb) in zip(sig_a, sig_b))


@torch.no_grad()
def activate(handle) -> int:
    """Make the shared modules hold base + handle.patches. Returns how many tensors changed.

    The original tensor of a touched parameter is kept as it is (no copy) and the parameter
    points at a new tensor holding the patched values; restoring points it back. So applying
    reads each original once and writes the result once (the memory-traffic floor), the
    extra memory is the touched weights, and a restore is exact by construction.
    """
    st = state_for(handle)
    want = plan(handle)
    changed = 0
    todo = []  # (key, param, new, entries, out): computed together below
    for key in list(st.applied.keys() | want.keys()):
        new = want.get(key)
        if _same(st.applied.get(key), new):
            continue
        comp, mod_name, pname = key
        param = getattr(st.modules[(comp, mod_name)], pname)
        if new is None:
            st.spare[key] = param.data  # kept for the next apply: no fresh pages to fault in
            param.data = st.originals.pop(key)  # the original tensor itself: bit-exact
            del st.applied[key]
        else:
            if key in st.originals:
                out = param.data  # a patched tensor of ours: overwrite it
            else:
                st.originals[key] = param.data
                out = st.spare.pop(key, None)
            entries = tuple((st.on_device(a, param.device), s, rows) for a, s, rows in new)
            todo.append((key, param, new, entries, out))
        changed += 1
    try:
        values = _compute_all([(st.originals[key], entries, key[2], out) for key, _, _, entries, out in todo])
    except BaseException:
        for key, param, _, _, _ in todo:  # nothing half-applied: these go back to the originals
            param.data = st.originals.pop(key)
            st.applied.pop(key, None)
        raise
    for (key, param, new, _, _), value in zip(todo, values):
        param.data = value
        st.applied[key] = new
    if st._on_device:
        st.keep_on_device({id(a) for entries in want.values() for a, _, _ in entries})
    return changed


def adapter_to(a: Adapter, device: torch.device) -> Adapter:
    """A copy of `a` with every tensor on `device`."""

    def move(t):
        return None if t is None else t.to(device)

    return dataclasses.replace(a, tensors={k: move(v) for k, v in a.tensors.items()}, bias=move(a.bias),
                               dora_scale=move(a.dora_scale))


def patched_value(original: torch.Tensor, entries: tuple, pname: str) -> torch.Tensor:
    """The patched value of one parameter (original + each (adapter, strength, rows) of the stack),
    as the patcher computes it: merge and the LoRA tools call this, so their results are bitwise
    the patched model's."""
    return _compute_all([(original, entries, pname, None)])[0]


def _is_chain(entries: tuple, pname: str) -> bool:
    return pname != "bias" and all(rows is None and is_plain_lora(a) for a, s, rows in entries)


def _compute_all(items: list) -> list:
    """[_compute(*item) for item in items]; the plain-LoRA chains (the common case) go to
    plain_lora_chains together, so fp16/bf16 CPU weights share its worker threads."""
    chains = [k for k, (_, entries, pname, _) in enumerate(items) if _is_chain(entries, pname)]
    in_chain = set(chains)
    values = [None if k in in_chain else _compute(*item) for k, item in enumerate(items)]
    done = plain_lora_chains([(items[k][0], [(a, s) for a, s, _ in items[k][1]], items[k][3]) for k in chains])
    for k, v in zip(chains, done):
        values[k] = v
    return values


def _compute(original: torch.Tensor, entries: tuple, pname: str, out: torch.Tensor | None) -> torch.Tensor:
    """original (+ each adapter in order), fp32 math, in original's dtype; into `out` if given.
    Biases and stacks that are not all plain LoRAs; _compute_all sends the plain chains elsewhere."""
    if pname == "bias":
        acc = original.float()
        for a, s, rows in entries:
            acc = patched_bias(acc, a, s)
    else:
        fp32 = original.dtype == torch.float32
        acc = original if fp32 else original.float()
        for i, (a, s, rows) in enumerate(entries):
            last = i == len(entries) - 1
            acc = patched_weight(acc, a, s, rows, out=out if (fp32 and last) else None)
        if acc is out:
            return out
    acc = acc.to(original.dtype)
    if out is not None:
        out.copy_(acc)
        return out
    return acc if acc.data_ptr() != original.data_ptr() else acc.clone()


def restore(handle) -> int:
    """Put the base weights back (bit-exact)."""
    st = state_for(handle)
    return activate(handle.with_patches(())) if st.applied else 0


def release(handle) -> None:
    """Restore the base weights and free every buffer the patcher holds for this model."""
    restore(handle)
    st = state_for(handle)
    st.spare.clear()
    st._on_device.clear()


def match_report(handle, raw: RawLora) -> Matched:
    return state_for(handle).matched(raw)


__all__ = ["LoraPatch", "activate", "restore", "release", "plan", "match_report", "state_for", "Target"]
