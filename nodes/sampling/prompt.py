"""Prompt encoding as ComfyUI does it: shipped CLIP tokenizers, weighted 77-token chunks,
the text encoders' hidden states per family, and ComfyUI's emphasis formula.

Per family (clip_skip in A1111 terms: 1 = last layer, 2 = penultimate, ...):

    sd1   CLIP-L: hidden_states[-skip] -> final_layer_norm            default skip 1
    sd2   OpenCLIP-H (all 24 layers kept): same, default skip 2
    sdxl  CLIP-L and bigG: hidden_states[-skip], NO final layer norm, default skip 2,
          concatenated on the feature axis (768 + 1280 = 2048); pooled = bigG's projected
          EOS feature (final LN on the last layer, text_projection) of the first chunk.

A clip_skip deeper than an encoder has layers falls back to its final (layer-normed) output
with a warning, as ComfyUI's set_clip_options does. Weights: every chunk is encoded with an
"empty" chunk (start, end, pad...) in the same batch, and for each token of weight w != 1,
z = (z - z_empty) * w + z_empty (ComfyUI's ClipTokenWeightEncoder). LoRA patches on the
text encoders are not applied here: the caller activates the handle's patches first.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..model.tokenizer import CHUNK_LENGTH, load_tokenizer
from .prompt_parse import parse_weights, segment_words

__all__ = [
    "CHUNK_LENGTH",
    "Conditioning",
    "encode_prompt",
    "load_tokenizer",
    "parse_weights",
    "tokenize_weighted",
]

log = logging.getLogger(__name__)

MAX_WORD_LENGTH = 8  # a piece this long may be split across chunks; a shorter one moves whole


def tokenize_weighted(tokenizer, text: str, pad_with_end: bool, lookup=None) -> list[list[tuple[int, float]]]:
    """Chunks of CHUNK_LENGTH (token id, weight) pairs, as ComfyUI's
    SDTokenizer.tokenize_with_weights builds them. With `lookup` (name -> vectors [n, D] or
    None, see embeddings.py), an `embedding:name` contributes its n vectors: those places
    hold a [D] tensor instead of a token id.

    Each weighted segment (or embedding-split piece of one) is tokenized at once. A piece
    that does not fit in the current chunk closes it (end token, pad) and starts the next,
    unless it has >= MAX_WORD_LENGTH tokens: then it fills the chunk and continues in the
    next. An empty prompt gives one chunk [start, end, pad...].
    """
    empty = tokenizer("")["input_ids"]  # [start, end]
    start, end = empty[0], empty[1]
    pad = end if pad_with_end else 0

    pieces: list[list[tuple[int, float]]] = []
    for segment, weight in parse_weights(text):
        for word in segment_words(segment, lookup):
            if isinstance(word, torch.Tensor):  # an embedding's vectors [n, D]
                pieces.append([(row, weight) for row in word])
                continue
            ids = tokenizer(word)["input_ids"][1:-1]  # drop the start/end the tokenizer adds
            pieces.append([(int(t), weight) for t in ids])

    chunks: list[list[tuple[int, float]]] = [[(start, 1.0)]]
    for piece in pieces:
        splittable = len(piece) >= MAX_WORD_LENGTH
        while piece:
            chunk = chunks[-1]
            room = CHUNK_LENGTH - 1 - len(chunk)  # places left before the end token
            if len(piece) <= room:
                chunk.extend(piece)
                break
            if splittable:
                chunk.extend(piece[:room])
                chunk.append((end, 1.0))
                piece = piece[room:]
            else:
                chunk.append((end, 1.0))
                chunk.extend([(pad, 1.0)] * room)
            chunks.append([(start, 1.0)])
    last = chunks[-1]
    last.append((end, 1.0))
    last.extend([(pad, 1.0)] * (CHUNK_LENGTH - len(last)))
    return chunks


# ------------------------------------------------------------------------------- encoding
@dataclass(frozen=True, eq=False)
class Conditioning:
    """cond: [1, 77*k, D] float32; pooled: [1, P] float32 for SDXL, else None."""

    cond: torch.Tensor
    pooled: torch.Tensor | None = None

    def __post_init__(self):
        c = self.cond
        if not isinstance(c, torch.Tensor) or c.dim() != 3 or c.shape[0] != 1 or c.shape[1] % CHUNK_LENGTH:
            shape = tuple(c.shape) if isinstance(c, torch.Tensor) else type(c).__name__
            raise ValueError(f"Conditioning.cond must be [1, 77*k, D], got {shape}")
        p = self.pooled
        if p is not None and (not isinstance(p, torch.Tensor) or p.dim() != 2 or p.shape[0] != 1):
            shape = tuple(p.shape) if isinstance(p, torch.Tensor) else type(p).__name__
            raise ValueError(f"Conditioning.pooled must be [1, P] or None, got {shape}")


@dataclass(frozen=True)
class _Tower:
    """How one text encoder is driven (ComfyUI's SDClipModel options for it)."""

    model: object
    tokenizer: object
    pad_with_end: bool  # CLIP-L pads with the end token, OpenCLIP (H, bigG) with id 0
    layer_norm_hidden: bool  # final_layer_norm on the chosen hidden state (not for SDXL)
    pooled: bool  # return the projected pooled output (SDXL bigG)


def _towers(handle) -> list[_Tower]:
    te, tok = handle.text_encoders, handle.tokenizers
    if handle.family == "sd1":
        return [_Tower(te[0], tok[0], pad_with_end=True, layer_norm_hidden=True, pooled=False)]
    if handle.family == "sd2":
        return [_Tower(te[0], tok[0], pad_with_end=False, layer_norm_hidden=True, pooled=False)]
    if handle.family == "sdxl":
        return [
            _Tower(te[0], tok[0], pad_with_end=True, layer_norm_hidden=False, pooled=False),
            _Tower(te[1], tok[1], pad_with_end=False, layer_norm_hidden=False, pooled=True),
        ]
    raise ValueError(f"unknown model family {handle.family!r}")


def _final_layer_norm(model) -> torch.nn.Module:
    # transformers 5 flattened CLIPTextModel (no .text_model); WithProjection keeps it.
    return getattr(model, "text_model", model).final_layer_norm


def _embedding_hook(model, vectors: dict):
    """A forward hook on the token embedding that writes embedding vectors at their places
    ({(chunk, position): [D]}), as ComfyUI's process_tokens splices them in."""
    def hook(module, args, out):
        out = out.clone()
        for (row, col), vec in vectors.items():
            out[row, col] = vec.to(out.device, out.dtype)
        return out

    return model.get_input_embeddings().register_forward_hook(hook)


def _encode_tower(tower: _Tower, text: str, clip_skip: int, min_chunks: int = 1,
                  lookup=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(z [1, 77*k, D] float32, pooled [1, P] float32 or None) for one encoder; empty-prompt
    chunks are appended up to `min_chunks` (CLIPTextEncodeSDXL evens out its two towers so);
    `lookup` resolves embedding:name (embeddings.py)."""
    chunks = tokenize_weighted(tower.tokenizer, text, tower.pad_with_end, lookup)
    while len(chunks) < min_chunks:
        chunks += tokenize_weighted(tower.tokenizer, "", tower.pad_with_end)
    vectors = {(i, j): t for i, c in enumerate(chunks) for j, (t, _) in enumerate(c) if isinstance(t, torch.Tensor)}
    # an embedding's place holds token 0 ('!', never the end token the pooled output looks for)
    ids = [[0 if isinstance(t, torch.Tensor) else t for t, _ in c] for c in chunks]
    weights = [[w for _, w in c] for c in chunks]
    has_weights = any(w != 1.0 for row in weights for w in row)
    if has_weights:  # the "empty prompt" reference: start, end, pad... at full length
        start, end = ids[0][0], tower.tokenizer("")["input_ids"][1]
        pad = end if tower.pad_with_end else 0
        ids.append([start, end] + [pad] * (CHUNK_LENGTH - 2))

    model = tower.model
    device = next(model.parameters()).device
    n_layers = model.config.num_hidden_layers
    handle = _embedding_hook(model, vectors) if vectors else None
    try:
        with torch.no_grad():
            out = model(input_ids=torch.tensor(ids, dtype=torch.long, device=device), output_hidden_states=True)
    finally:
        if handle is not None:
            handle.remove()
    with torch.no_grad():
        if clip_skip > n_layers:
            log.warning(
                "clip_skip %d exceeds the encoder's %d layers; using its last layer output, as ComfyUI does",
                clip_skip, n_layers,
            )
            z = out.last_hidden_state  # final layer, layer-normed
        else:
            z = out.hidden_states[-clip_skip]  # hidden_states: embeddings + one per layer
            if tower.layer_norm_hidden:
                z = _final_layer_norm(model)(z)
        z = z.float()  # [B, 77, D], B = chunks (+1 empty)
        pooled = out.text_embeds[0:1].float() if tower.pooled else None  # first chunk only

    if has_weights:
        z_empty = z[-1]  # [77, D]
        w = torch.tensor(weights, dtype=torch.float32, device=z.device)[..., None]  # [k, 77, 1]
        zk = z[: len(chunks)]
        z = torch.where(w != 1.0, (zk - z_empty) * w + z_empty, zk)
    z = z[: len(chunks)].reshape(1, len(chunks) * CHUNK_LENGTH, z.shape[-1])  # chunks along tokens
    return z, pooled


def _skip(handle, clip_skip):
    skip = handle.default_clip_skip if clip_skip is None else clip_skip
    if isinstance(skip, bool) or not isinstance(skip, int) or skip < 1:
        raise ValueError(f"clip_skip must be an int >= 1 (1 = last layer), got {clip_skip!r}")
    return max(1, skip - handle.text_layers_dropped)


def encode_prompt_sdxl(handle, text_g: str, text_l: str, clip_skip: int | None = None,
                       lookups: list | None = None) -> Conditioning:
    """CLIPTextEncodeSDXL: text_l for CLIP-L, text_g for bigG; the shorter padded with empty chunks."""
    if handle.family != "sdxl":
        raise ValueError(f"separate text_g / text_l need an SDXL model, got {handle.label}")
    skip = _skip(handle, clip_skip)
    t_l, t_g = _towers(handle)
    lk_l, lk_g = lookups or (None, None)
    n = max(len(tokenize_weighted(t_l.tokenizer, text_l, t_l.pad_with_end, lk_l)),
            len(tokenize_weighted(t_g.tokenizer, text_g, t_g.pad_with_end, lk_g)))
    z_l, _ = _encode_tower(t_l, text_l, skip, n, lookup=lk_l)
    z_g, pooled = _encode_tower(t_g, text_g, skip, n, lookup=lk_g)
    cond = torch.cat([z_l, z_g.to(z_l.device)], dim=-1)
    return Conditioning(cond, pooled.to(z_l.device))


def encode_prompt(handle, text: str, clip_skip: int | None = None, lookups: list | None = None) -> Conditioning:
    """Encode `text` with the handle's text encoder(s) the way ComfyUI's CLIPTextEncode does.

    clip_skip: 1 = last layer, 2 = penultimate, ...; None = the family's default.
    lookups: one embedding lookup per encoder (embeddings.lookups_for), or None for none.
    Runs under torch.no_grad() on the encoders' device; returns float32 tensors there.
    """
    if not isinstance(text, str):
        raise TypeError(f"prompt must be a str, got {type(text).__name__}")
    skip = handle.default_clip_skip if clip_skip is None else clip_skip
    if isinstance(skip, bool) or not isinstance(skip, int) or skip < 1:
        raise ValueError(f"clip_skip must be an int >= 1 (1 = last layer), got {clip_skip!r}")

    # A tower missing its last layer(s) (diffusers SD 2.x folders): layer -k of the full
    # tower is layer -(k - dropped) of the one we have; skip 1 then means the true last layer,
    # which is gone, and falls back to the last one present.
    skip = max(1, skip - handle.text_layers_dropped)
    towers = _towers(handle)
    lookups = lookups or [None] * len(towers)
    results = [_encode_tower(t, text, skip, lookup=lk) for t, lk in zip(towers, lookups)]
    if len(results) == 1:
        return Conditioning(results[0][0], None)
    (z_l, _), (z_g, pooled) = results
    # Both tokenizers chunk identically (only pads differ); cut as ComfyUI does in case not.
    n = min(z_l.shape[1], z_g.shape[1])
    cond = torch.cat([z_l[:, :n], z_g[:, :n].to(z_l.device)], dim=-1)  # [1, 77*k, D_l + D_g]
    return Conditioning(cond, pooled.to(z_l.device))
