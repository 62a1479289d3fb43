"""Textual-inversion embeddings: files, the vectors for each text encoder, prompt syntax.

Files (in the `embeddings` model folder, found like LoRAs: path, or file name anywhere):
    A1111 .pt        {"string_to_param": {"*": [n, D]}, "string_to_token": ..., "name", "step", ...}
                     read with torch.load(weights_only=True) only
    A1111 .safetensors  {"emb_params": [n, D]}
    SDXL             {"clip_l": [n, 768], "clip_g": [n, 1280]}
    other            the first tensor (ComfyUI's fallback: {"<name>": [n, D]}, a bare [D] vector)
Per encoder the vectors are picked as ComfyUI's `sd1_clip.load_embed` picks them:
"string_to_param", then the encoder's key (clip_l for SD 1.x and SDXL's CLIP-L, clip_h for
SD 2.x, clip_g for SDXL's bigG), then the first tensor. Vectors whose width is not the
encoder's, or an SDXL pair (clip_l + clip_g) on another family, are an error naming the
embedding's family and the model's (ComfyUI warns and drops the first, and uses the second's
clip_l on SD 1.x).

Prompt syntax:
    ComfyUI   `embedding:name` (after a space or newline, or starting a weighted segment,
              so `(embedding:name:1.2)` weights it), as its tokenizer splits it
    A1111     the file name as a word (`EasyNegative, bad_hands`): `a1111_to_comfy` rewrites
              each such word to `embedding:name` before parsing (longest names first,
              case-insensitive, as A1111 matches tokenized names).
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..io.errors import CheckpointError, LoraLabError
from ..io.model_names import find_model_file
from ..io.paths import EMBEDDING_EXTENSIONS, list_names
from .prompt_parse import EMBEDDING_PREFIX

log = logging.getLogger(__name__)

_FILE_CACHE: dict[tuple, dict] = {}
_WIDTH_FAMILY = {768: "SD 1.x", 1024: "SD 2.x", 1280: "SDXL (bigG only)"}
TOWER_KEYS = {"sd1": ("clip_l",), "sd2": ("clip_h",), "sdxl": ("clip_l", "clip_g")}


class EmbeddingError(LoraLabError, ValueError):
    """An embedding that cannot be used with this model: unreadable, empty, or another family's."""


def resolve_embedding(name: str) -> Path:
    return find_model_file("embeddings", name, EMBEDDING_EXTENSIONS)


def _read(path: Path) -> dict:
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except SafetensorError as e:
            raise EmbeddingError(f"{path.name}: not a readable .safetensors file ({e})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - UnpicklingError, zip errors...: never fall back to unsafe loading
        raise CheckpointError(f"{path.name}: refused: this pickled embedding cannot be loaded safely "
                              f"({str(e).splitlines()[0][:200]})") from None
    if isinstance(obj, torch.Tensor):
        return {"emb_params": obj}
    if not isinstance(obj, dict):
        raise EmbeddingError(f"{path.name}: not an embedding (a {type(obj).__name__})")
    return obj


def load_embedding_file(path: Path) -> dict:
    """The file's top-level dict (cached per path, size and mtime)."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _FILE_CACHE:
        _FILE_CACHE[key] = _read(path)
    return _FILE_CACHE[key]


def _first_tensor(raw: dict) -> torch.Tensor | None:
    return next((v for v in raw.values() if isinstance(v, torch.Tensor)), None)


def embedding_family(raw: dict) -> str:
    if "clip_l" in raw and "clip_g" in raw:
        return "SDXL"
    t = _vectors_any(raw)
    return _WIDTH_FAMILY.get(int(t.shape[-1]), f"{int(t.shape[-1])}-wide vectors") if t is not None else "unknown"


def _vectors_any(raw: dict, key: str | None = None) -> torch.Tensor | None:
    s2p = raw.get("string_to_param")
    if isinstance(s2p, dict) and s2p:
        return next(iter(s2p.values()))
    if key is not None and isinstance(raw.get(key), torch.Tensor):
        return raw[key]
    return _first_tensor(raw)


def vectors_for(raw: dict, key: str, width: int, name: str, model_label: str) -> torch.Tensor:
    """[n, width] float32 vectors for the encoder that reads `key`."""
    t = _vectors_any(raw, key)
    if t is None or t.numel() == 0:
        raise EmbeddingError(f"embedding {name!r} holds no vectors (keys {sorted(raw)[:6]})")
    t = t.detach().float().reshape(-1, t.shape[-1])
    if t.shape[-1] != width or (embedding_family(raw) == "SDXL") != (model_label == "SDXL"):
        raise EmbeddingError(f"embedding {name!r} is made for {embedding_family(raw)} ({t.shape[-1]}-wide vectors), "
                             f"but the model is {model_label} (its {key} encoder takes {width})")
    return t


@dataclass(frozen=True)
class EmbeddingLookup:
    """name -> vectors for one text encoder of one model (what the tokenizer asks for)."""

    key: str
    width: int
    model_label: str

    def __call__(self, name: str) -> torch.Tensor | None:
        try:
            path = resolve_embedding(name)
        except LoraLabError as e:
            if "ambiguous" in str(e) or "leaves" in str(e) or "absolute" in str(e):
                raise EmbeddingError(str(e)) from None
            return None  # ComfyUI: "embedding:x does not exist, ignoring"
        return vectors_for(load_embedding_file(path), self.key, self.width, name, self.model_label)


def lookups_for(handle) -> list[EmbeddingLookup]:
    """One lookup per text encoder, in the handle's encoder order."""
    keys = TOWER_KEYS[handle.family]
    return [EmbeddingLookup(k, int(enc.get_input_embeddings().weight.shape[1]), handle.label)
            for k, enc in zip(keys, handle.text_encoders)]


def embedding_names() -> list[str]:
    """Stems of the files in the embeddings folder(s)."""
    return sorted({Path(rel).stem for rel in list_names("embeddings", EMBEDDING_EXTENSIONS)})


def a1111_to_comfy(text: str, names: list[str] | None = None) -> str:
    """Rewrite A1111-style bare embedding names to ComfyUI's `embedding:name` syntax."""
    names = embedding_names() if names is None else names
    if not names or not text:
        return text
    alternatives = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    word = re.compile(r"(?<![\w:.\-/])(" + alternatives + r")(?![\w\-])", re.IGNORECASE)

    def repl(m: re.Match) -> str:
        before = text[m.start() - 1] if m.start() else ""
        sep = "" if before in ("", " ", "\n", "(") else " "  # ComfyUI splits only after space/newline
        return f"{sep}{EMBEDDING_PREFIX}{m.group(1)}"

    return word.sub(repl, text)


def prompt_embedding_names(text: str) -> list[str]:
    """Names of the embedding files a prompt uses (either syntax), in order, once each: the
    names the tokenizer would ask for (weights and comma tails parsed as it parses them)."""
    from .prompt_parse import parse_weights, segment_words

    out: list[str] = []

    def record(name: str):
        try:
            resolve_embedding(name)
        except LoraLabError:
            return None
        if name not in out:
            out.append(name)
        return True

    for segment, _ in parse_weights(a1111_to_comfy(text or "")):
        segment_words(segment, record)
    return out


def embedding_list() -> dict:
    """{"names": every embedding name (relative, '/'-separated)} for the editor."""
    return {"names": sorted(list_names("embeddings", EMBEDDING_EXTENSIONS), key=str.lower)}


def embedding_info(name: str) -> dict:
    """What the editor shows about an embedding, like lora_info for a LoRA: its family, vector
    count, A1111 training facts, sidecars, and trigger words (the name to write in a prompt,
    then civitai trainedWords / the A1111 sidecar's activation text)."""
    from ..lora.lora_info import read_sidecars

    path = resolve_embedding(name)
    raw = load_embedding_file(path)
    t = _vectors_any(raw, "clip_l")
    side = read_sidecars(path, "embeddings")
    words = [path.stem] + side.get("trained_words", []) + [side.get("json", {}).get("activation text", "")]
    seen: list[str] = []
    for w in words:
        if w and w.strip() and w.strip() not in seen:
            seen.append(w.strip())
    return {
        "name": name, "file": path.name, "family": embedding_family(raw),
        "vectors": int(t.reshape(-1, t.shape[-1]).shape[0]) if t is not None else 0,
        "width": int(t.shape[-1]) if t is not None else 0,
        "training": {k: raw[k] for k in ("name", "step", "sd_checkpoint", "sd_checkpoint_name")
                     if isinstance(raw.get(k), (str, int, float))},
        "sidecars": side, "trigger_words": ", ".join(seen),
    }
