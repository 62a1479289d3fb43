"""Merge to Checkpoint: bake a handle's LoRA stack into the weights and write a checkpoint.

Streaming (the handle came from a .safetensors single file): the SOURCE file is walked tensor
by tensor; a tensor the stack touches is recomputed in fp32 from the file's own values with
the patcher's math (adapters.patched_weight / patched_bias, in the patcher's order), cast and
written; every other tensor is copied. Memory holds about one tensor; the loaded model is
not read at all, so the result equals "base file + stack" whatever dtype the model was
loaded in. The output keeps the source's layout and keys, including position_ids, DDPM
buffers and marker keys, and drops EMA weights (`model_ema.*`): they would be the base
without the LoRAs. Metadata records what was dropped.

Otherwise (a handle from a diffusers folder or a pickled file, or format="diffusers"), the
shared modules are patched (patcher.activate) and written from there, tensor by tensor.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..io.checks import check_fits
from ..io.destination import Destination
from ..io.errors import CheckpointError
from ..io.safetensors_stream import (
    CAN_COPY_RANGE,
    Item,
    RawReader,
    state_dict_items,
    write_stream,
)
from ..model import ckpt_config, ckpt_keys
from ..model.handle import ModelHandle, held_below_fp32, is_skeleton
from .merge_meta import checkpoint_metadata

log = logging.getLogger(__name__)

DTYPES = {"same": None, "fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
FORMATS = ("single-file", "diffusers")
DROPPED_PREFIXES = ("model_ema.",)
WRITE_DEPTH = 1  # tensors queued for the writer thread (the reader keeps WRITE_DEPTH + 2 buffers)
MIN_SLOT = 16 << 20  # bytes per read buffer at least (untouched tensors are copied in chunks of this)


# ------------------------------------------------------------------------ model skeletons
def skeleton_handle(path: str | os.PathLike) -> ModelHandle:
    """A handle whose modules live on the meta device, built from a file's header only.

    Enough to match LoRAs and plan a merge (names and shapes) without reading any weight.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    reader = RawReader(path)
    try:
        shapes = reader.shapes
        family = ckpt_config.detect_family(shapes)
        probe = None
        if family == "sd2" and ckpt_config.SD2_V_PROBE in shapes:
            probe = float(reader.read(ckpt_config.SD2_V_PROBE).float().std(unbiased=False))
        prediction = ckpt_config.detect_prediction_type(shapes, reader.metadata, family, probe)
    finally:
        reader.close()
    with torch.device("meta"):
        unet = UNet2DConditionModel(**ckpt_config.infer_unet_config(shapes, family))
        vae = AutoencoderKL(**ckpt_config.infer_vae_config(shapes, family))
        encoders = tuple(
            (CLIPTextModelWithProjection if (family == "sdxl" and i == 1) else CLIPTextModel)(CLIPTextConfig(**c))
            for i, c in enumerate(ckpt_config.infer_text_configs(shapes, family)))
    return ModelHandle(family, prediction, unet, vae, encoders, (None,) * len(encoders), source=str(path))


# ------------------------------------------------------------------- source key -> targets
@dataclass(frozen=True)
class Slot:
    """Where (part of) a source tensor lives in the handle's modules."""

    key: tuple  # (component, module, "weight"|"bias"), as in patcher.plan
    rows: tuple | None = None  # (start, stop) rows of the source tensor (OpenCLIP in_proj q/k/v)
    transposed: bool = False  # OpenCLIP text_projection is stored as the transpose


def _param_key(comp: str, dkey: str) -> tuple:
    module, _, pname = dkey.rpartition(".")
    return comp, module, pname


def source_slots(family: str, shapes: dict, unet_config: dict) -> dict:
    """{single-file key: [Slot]} for every UNet and text-encoder tensor, from the loader's tables."""
    out: dict = {}
    lookup = ckpt_keys.block_lookup(ckpt_keys.unet_block_pairs(unet_config), ldm_side=True)
    pre = ckpt_keys.UNET_PREFIX
    for key in shapes:
        if key.startswith(pre):
            hit = ckpt_keys.translate(key[len(pre):], lookup, to_diffusers=True)
            if hit is not None:
                out[key] = [Slot(_param_key("unet", hit[0]))]
    for i, (prefix, layout) in enumerate(ckpt_keys.TEXT_PREFIXES[family]):
        comp = f"te{i + 1}"
        for key in shapes:
            if not key.startswith(prefix) or ckpt_keys.is_non_model_key(key, family):
                continue
            if layout == "hf":
                conv, _ = ckpt_keys.hf_clip_to_diffusers({key: None}, prefix)
                out[key] = [Slot(_param_key(comp, d)) for d in conv]
                continue
            conv, _ = ckpt_keys.openclip_to_diffusers({key: torch.empty(shapes[key], device="meta")}, prefix,
                                                       with_projection=(family == "sdxl"))
            rest = key[len(prefix):]
            slots = []
            for dkey, value in conv.items():
                rows = None
                if len(conv) == 3:  # fused in_proj: q rows first, then k, then v
                    i_qkv = "qkv".index(dkey.split(".")[-2][0])
                    rows = (i_qkv * value.shape[0], (i_qkv + 1) * value.shape[0])
                slots.append(Slot(_param_key(comp, dkey), rows, transposed=(rest == "text_projection")))
            if slots:
                out[key] = slots
    return out


# ------------------------------------------------------------------------------- math
def apply_entries(w: torch.Tensor, entries: tuple, pname: str, out: torch.Tensor | None = None) -> torch.Tensor:
    """base (fp32) + the stack's entries (adapter, strength, rows): the patcher's own arithmetic
    (patcher.patched_value: a stack of plain LoRAs is one concatenated low-rank product), so a
    merged file holds exactly the weights the patched model holds.

    out: the result is copied into it (it may be `w` itself)."""
    from ..lora.patcher import patched_value

    acc = patched_value(w, entries, pname)
    if out is not None and acc is not out:
        out.copy_(acc)
        return out
    return acc


def _patched_source_tensor(t: torch.Tensor, slots: list, want: dict, shapes: dict) -> torch.Tensor:
    """The merged value (fp32) of one source tensor `t` given the slots the stack touches."""
    w = t.to(torch.float32, copy=True)
    for s in slots:
        block = w[s.rows[0]:s.rows[1]] if s.rows else w
        if s.transposed:
            block = block.t()
        new = apply_entries(block.reshape(shapes[s.key]), want[s.key], s.key[2])
        block.copy_(new.reshape(block.shape))
    return w


# -------------------------------------------------------------------------------- merging
@contextlib.contextmanager
def compute_threads():
    """Torch intra-op threads for the merge: all CPUs but one, which the writer thread and
    the kernel's copying use. The per-tensor math is small and memory-bound; on a 2-CPU
    machine a second OpenMP thread competing with the writer made the merge ~2x slower
    (wake-up stalls on every op). The previous setting is restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, min(before, (os.cpu_count() or 2) - 1)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def streamable(handle: ModelHandle) -> bool:
    """True when the handle's weights are exactly those of its .safetensors source file."""
    p = Path(handle.source) if handle.source else None
    return bool(p and p.is_file() and p.suffix.lower() == ".safetensors" and handle.text_layers_dropped == 0)


def _module_shapes(st) -> dict:
    out = {}
    for (comp, name), mod in st.modules.items():
        for pname in ("weight", "bias"):
            p = getattr(mod, pname, None)
            if p is not None:
                out[(comp, name, pname)] = tuple(p.shape)
    return out


def _check_same_file(handle, reader: RawReader, slots: dict, st) -> None:
    """A few small tensors of the file must equal the loaded model's (unpatched) values."""
    if is_skeleton(handle):
        return
    seen: dict = {}
    for key in sorted(slots):
        sl = slots[key]
        if len(sl) != 1 or sl[0].rows or sl[0].transposed or len(reader.shapes[key]) != 1:
            continue
        comp = sl[0].key[0]
        if seen.get(comp, 0) >= 2:
            continue
        seen[comp] = seen.get(comp, 0) + 1
        comp_, mod_name, pname = sl[0].key
        param = getattr(st.modules[(comp_, mod_name)], pname)
        orig = st.originals.get(sl[0].key, param.data).detach().cpu()
        if not torch.equal(reader.read(key).to(orig.dtype).reshape(orig.shape), orig):
            raise CheckpointError(f"{reader.path.name} no longer holds the weights the model was loaded from "
                                  f"(tensor {key!r} differs); load the checkpoint again")


def _stream_items(handle, reader: RawReader, dtype) -> tuple[list, list]:
    from ..lora.patcher import plan, state_for

    st = state_for(handle)
    want = plan(handle)
    shapes = reader.shapes
    if ckpt_config.detect_family(shapes) != handle.family:
        raise CheckpointError(f"{reader.path.name} is not the {handle.label} model this handle was loaded from")
    slots = source_slots(handle.family, shapes, dict(handle.unet.config))
    mod_shapes = _module_shapes(st)
    touched: dict = {}
    for key, sl in slots.items():
        hit = [s for s in sl if s.key in want]
        if hit:
            touched[key] = hit
    covered = {s.key for sl in touched.values() for s in sl}
    if set(want) - covered:
        raise CheckpointError(f"{reader.path.name}: no tensor for patched parameters {sorted(set(want) - covered)[:3]}")
    # read buffers: whole tensors only for those the stack touches; the rest goes in chunks
    reader.slot_bytes = max([MIN_SLOT] + [reader.nbytes(k) for k in touched])
    _check_same_file(handle, reader, slots, st)

    # fp32 scratch for the common case (one whole weight): no allocation per tensor
    simple = {k for k, sl in touched.items() if len(sl) == 1 and not sl[0].rows and not sl[0].transposed}
    work = torch.empty(max((math.prod(shapes[k]) for k in simple), default=0), dtype=torch.float32)

    def produce(key, out_dtype):
        if key not in touched:  # unchanged: a kernel-side copy, or through the read buffers in chunks
            if reader.dtype(key) == out_dtype and CAN_COPY_RANGE:
                return reader.raw_range(key)
            chunks = reader.chunks(key)
            return chunks if reader.dtype(key) == out_dtype else (c.to(out_dtype) for c in chunks)
        t = reader.read(key)  # a view of the reader's ring buffer
        if key not in simple:
            merged = _patched_source_tensor(t, touched[key], want, mod_shapes)
            check_fits(merged, out_dtype, reader.path.name, key)
            return merged.to(out_dtype)
        s = touched[key][0]
        w = t if t.dtype == torch.float32 else work[: t.numel()].view(t.shape).copy_(t)
        w2 = w.view(mod_shapes[s.key])
        apply_entries(w2, want[s.key], s.key[2], out=w2)
        check_fits(w, out_dtype, reader.path.name, key)  # before it is rounded or cast
        if out_dtype != t.dtype:  # a new tensor: `work` is reused by the next one
            return w.to(out_dtype, copy=True)
        return t if w is t else t.copy_(w)  # rounded back into the ring buffer it came from

    items, dropped = [], []
    for key, shape in shapes.items():
        if key.startswith(DROPPED_PREFIXES):
            dropped.append(key)
            continue
        src = reader.dtype(key)
        out_dtype = dtype if (dtype is not None and src.is_floating_point) else src
        items.append(Item(key, out_dtype, shape, functools.partial(produce, key, out_dtype)))
    return items, dropped


@contextlib.contextmanager
def _checked_source(handle: ModelHandle):
    """Yields (reader, slots) for the handle's .safetensors source, once _check_same_file
    has found it still holds the weights the model was loaded from."""
    from ..lora.patcher import state_for

    reader = RawReader(handle.source)
    try:
        slots = source_slots(handle.family, reader.shapes, dict(handle.unet.config))
        _check_same_file(handle, reader, slots, state_for(handle))
        yield reader, slots
    finally:
        reader.close()


@contextlib.contextmanager
def source_weights(handle: ModelHandle):
    """Yields read(key) -> the unpatched value of parameter key = (component, module, name),
    fp32, read from the handle's .safetensors source; or None when the source cannot be
    streamed. Where the model was loaded below fp32 (a GPU's bf16/fp16) these are the exact
    file values, not the rounded ones the modules hold."""
    from ..lora.patcher import state_for

    if not streamable(handle):
        yield None
        return
    with _checked_source(handle) as (reader, slots):
        where = {sl.key: (key, sl) for key, sls in slots.items() for sl in sls}
        mod_shapes = _module_shapes(state_for(handle))

        def read(pkey: tuple) -> torch.Tensor:
            key, sl = where[pkey]
            t = reader.read(key)
            if sl.rows:
                t = t[sl.rows[0]:sl.rows[1]]
            if sl.transposed:
                t = t.t()
            return t.to(torch.float32, copy=True).reshape(mod_shapes[pkey])  # the ring buffer is reused

        yield read


def _module_items(handle, dtype) -> list:
    from ..lora.patcher import activate
    from ..model.checkpoint_save import ldm_state_dict

    if is_skeleton(handle):
        raise CheckpointError("this model's weights are not loaded and its source cannot be streamed")
    activate(handle)  # the shared modules now hold base + stack
    sd = ldm_state_dict(handle.family, handle.unet, handle.vae, handle.text_encoders)
    name = Path(handle.source).name if handle.source else "the model"
    for key, t in sd.items():
        check_fits(t, dtype or t.dtype, name, key)
    if handle.prediction_type == "v_prediction":
        sd["v_pred"] = torch.tensor([])  # ComfyUI's marker, as checkpoint_save writes it
    return state_dict_items(sd, dtype)


def _diffusers_source(handle: ModelHandle, torch_dtype):
    """The handle and dtype the diffusers writer (which writes the modules) should use.

    "same" is the source file's dtype, as in the single-file merge. A model held below fp32
    (a GPU's bf16/fp16) or not loaded is loaded again in fp32 on the CPU from its
    .safetensors source with the same stack, so the folder holds the file's exact values plus
    the LoRAs, not bf16-rounded ones."""
    if not streamable(handle):
        return handle, torch_dtype
    from collections import Counter

    with _checked_source(handle) as (reader, _):
        floats = Counter(d for d in map(reader.dtype, reader.shapes) if d.is_floating_point)
    if torch_dtype is None and floats:
        torch_dtype = floats.most_common(1)[0][0]
    if held_below_fp32(handle):
        from ..model.checkpoint import load_single_file

        log.info("%s holds %s weights: loading it again in fp32 for the diffusers folder",
                 Path(handle.source).name, "no" if is_skeleton(handle) else str(handle.unet.dtype).replace("torch.", ""))
        full = load_single_file(handle.source, dtype=torch.float32, device="cpu")
        handle = full.with_patches(handle.patches)
    return handle, torch_dtype


def merge_checkpoint(handle: ModelHandle, dest: Destination, dtype: str = "same", fmt: str = "single-file",
                     prompt=None, extra_pnginfo: dict | None = None, progress: bool = True) -> Path:
    """Write base + handle's stack to `dest`; returns the written path."""
    from ..io.progress import Progress

    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {tuple(DTYPES)}")
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    dest.check()
    torch_dtype = DTYPES[dtype]
    if fmt == "diffusers":
        from .merge_diffusers import write_diffusers

        handle, torch_dtype = _diffusers_source(handle, torch_dtype)
        return write_diffusers(handle, dest, torch_dtype, lambda title: checkpoint_metadata(
            handle, title, None, prompt, extra_pnginfo))
    reader = RawReader(handle.source, ring=WRITE_DEPTH + 2) if streamable(handle) else None
    try:
        with torch.no_grad(), compute_threads():
            if reader is not None:
                items, dropped = _stream_items(handle, reader, torch_dtype)
                source_meta = reader.metadata
            else:
                items, dropped, source_meta = _module_items(handle, torch_dtype), [], {}
            with dest.writing(".safetensors") as tmp, Progress(len(items), "merge", disable=not progress) as bar:
                title = (dest.target.stem if dest.target is not None else dest.stem)
                meta = checkpoint_metadata(handle, title, source_meta, prompt, extra_pnginfo, dropped)
                write_stream(tmp, items, meta, on_item=lambda it: bar.update(1), depth=WRITE_DEPTH)
    finally:
        if reader is not None:
            reader.close()
    log.info("merged %d LoRA(s) into %s (%s)", len(handle.patches), dest.path,
             "streamed from the source file" if reader is not None else "from the loaded modules")
    return dest.path
