"""What the editor shows about a LoRA file: trigger words, family, rank/alpha, training tags,
sidecar notes. Plain functions returning JSON-safe dicts; the ComfyUI routes
(server_routes.py) only wrap them.

Reads the file's header and its alpha scalars, not its weights (a 200 MB LoRA is described in
milliseconds). Names are resolved inside the loras folder(s) only: absolute paths, `..` and
links that leave the folder are refused.
"""
from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from pathlib import Path

from ..io.errors import LoraLabError, ModelPathError
from ..io.paths import LORA_EXTENSIONS

log = logging.getLogger(__name__)

# ss_base_model_version / modelspec.architecture prefixes -> family
_META_FAMILY = (("sdxl", "sdxl"), ("stable-diffusion-xl", "sdxl"), ("sd_v2", "sd2"), ("stable-diffusion-v2", "sd2"),
                ("sd_v1", "sd1"), ("stable-diffusion-v1", "sd1"))
_WIDTH_FAMILY = {768: "sd1", 1024: "sd2", 2048: "sdxl"}  # cross-attention context width
TRAINING_KEYS = ("ss_output_name", "ss_sd_model_name", "ss_network_module", "ss_network_args", "ss_num_epochs",
                 "ss_max_train_steps", "ss_steps", "ss_learning_rate", "ss_resolution", "ss_num_train_images",
                 "ss_training_comment", "ss_training_finished_at", "modelspec.title", "modelspec.author",
                 "modelspec.description", "modelspec.date", "modelspec.resolution")
SIDECAR_JSON_KEYS = ("description", "sd version", "activation text", "preferred weight", "negative text", "notes")
TOP_TAGS = 20


class LoraInfoError(LoraLabError):
    """A request the info route answers with an HTTP error: `status` 400 (refused name),
    404 (no such file) or 422 (not a readable LoRA)."""

    def __init__(self, status: int, message: str):
        self.status = status
        super().__init__(message)


def family_from_metadata(metadata: dict) -> str | None:
    for key in ("ss_base_model_version", "modelspec.architecture"):
        value = str(metadata.get(key) or "").lower()
        for prefix, family in _META_FAMILY:
            if value.startswith(prefix):
                return family
    return None


def family_from_shapes(shapes: dict) -> str | None:
    """SDXL when a second text encoder is targeted, else from the cross-attention key width."""
    if any(k.startswith(("lora_te2_", "text_encoder_2.")) for k in shapes):
        return "sdxl"
    for key, shape in shapes.items():
        if re.search(r"attn2[._]to_k[._](lora_down|lora_A|lora\.down|down)[._]weight$", key) and len(shape) >= 2:
            return _WIDTH_FAMILY.get(int(shape[1]))
    return None


def tag_counts(metadata: dict) -> list[tuple[str, int]]:
    """kohya's ss_tag_frequency ({folder: {tag: count}}) summed over folders, most frequent first."""
    try:
        freq = json.loads(metadata.get("ss_tag_frequency") or "{}")
    except json.JSONDecodeError:
        return []
    counts: Counter = Counter()
    for tags in freq.values() if isinstance(freq, dict) else []:
        for tag, n in (tags or {}).items() if isinstance(tags, dict) else []:
            if str(tag).strip():
                try:
                    counts[str(tag).strip()] += int(n)
                except (TypeError, ValueError):
                    continue
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


SIDECAR_MAX_BYTES = 1 << 20  # a sidecar is notes: read at most this much of one


def sidecar(path: Path, suffix: str, refused: list | None = None, kind: str = "loras") -> Path | None:
    """The sidecar `<stem><suffix>` of a LoRA file, when it is a file inside the loras folders
    (a link that leads out is refused, and its name added to `refused`)."""
    from ..io.paths import confined

    side = path.with_name(path.stem + suffix)
    try:
        exists = side.is_file()
    except (OSError, ValueError):
        return None
    if not exists:
        return None
    real = confined(kind, side)
    if real is None:
        log.warning("%s: refusing to read it: it leads outside the %s folders", side.name, kind)
        if refused is not None:
            refused.append(side.name)
    return real


def read_text_head(path: Path, limit: int = SIDECAR_MAX_BYTES) -> str:
    """The first `limit` bytes of a text file, decoded as UTF-8 (strict)."""
    import codecs

    with open(path, "rb") as f:  # final=False: a character cut at the limit is dropped, not an error
        return codecs.getincrementaldecoder("utf-8")().decode(f.read(limit), final=False)


def read_sidecars(path: Path, kind: str = "loras") -> dict:
    """A1111 `<stem>.json`, a `<stem>.txt` and civitai's `<stem>.civitai.info`, when present
    inside the folders of `kind` (loras; embeddings for an embedding)."""
    out: dict = {}
    refused: list = []
    side_json = sidecar(path, ".json", refused, kind)
    if side_json is not None:
        try:
            data = json.loads(read_text_head(side_json))
            out["json"] = {k: data[k] for k in SIDECAR_JSON_KEYS if isinstance(data, dict) and data.get(k) not in
                           (None, "")}
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
            out["json_error"] = f"{side_json.name}: {e}"
    side_txt = sidecar(path, ".txt", refused, kind)
    if side_txt is not None:
        try:
            out["txt"] = read_text_head(side_txt, 16000).strip()[:4000]
        except (UnicodeDecodeError, OSError) as e:
            out["txt_error"] = f"{side_txt.name}: {e}"
    civitai = sidecar(path, ".civitai.info", refused, kind)
    if civitai is not None:
        try:
            data = json.loads(read_text_head(civitai))
            words = data.get("trainedWords") if isinstance(data, dict) else None
            if isinstance(words, list):
                out["trained_words"] = [str(w) for w in words if str(w).strip()]
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
            out["civitai_error"] = f"{civitai.name}: {e}"
    if refused:
        out["refused"] = refused
    return out


def _layer_stats(src) -> dict:
    """Layer counts, adapter kinds, ranks and alphas from the key names and shapes."""
    from .lora_formats import split_key

    groups: dict[str, dict] = {}
    for key, shape in src.shapes.items():
        hit = split_key(key)
        if hit is not None:
            groups.setdefault(hit[0], {})[hit[1]] = (key, shape)
    kinds: Counter = Counter()
    ranks: Counter = Counter()
    alphas: Counter = Counter()
    unet = text = 0
    for base, roles in groups.items():
        if "down" in roles:
            shape = roles["down"][1]
            kind = "locon" if len(shape) == 4 and shape[-1] > 1 else "lora"
            ranks[int(shape[0])] += 1
        elif "w1a" in roles:
            kind = "loha"
            ranks[int(roles["w1a"][1][-1])] += 1
        elif any(r.startswith("k_w") for r in roles):
            kind = "lokr"
        elif "diff" in roles or "diff_b" in roles:
            kind = "diff"
        elif "ia3" in roles and "on_input" in roles:
            kind = "ia3"
        elif "oft_blocks" in roles:
            kind = "boft" if len(roles["oft_blocks"][1]) == 4 else "oft"
        elif "g_a1" in roles:
            kind = "glora"
        else:
            continue
        if "dora" in roles:
            kind = "dora"
        kinds[kind] += 1
        if base.startswith(("lora_te", "text_encoder", "te_", "te1", "te2")):
            text += 1
        else:
            unet += 1
        if "alpha" in roles:
            try:
                alphas[float(src.get(roles["alpha"][0]))] += 1
            except (TypeError, ValueError, RuntimeError):
                pass
    return {"layers": {"unet": unet, "text": text}, "kinds": dict(kinds),
            "rank": ranks.most_common(1)[0][0] if ranks else None,
            "alpha": alphas.most_common(1)[0][0] if alphas else None,
            "ranks": sorted(ranks), "alphas": sorted(alphas)}


def describe_lora(path: str | os.PathLike, name: str | None = None) -> dict:
    """Everything the info panel shows about one LoRA file (JSON-safe)."""
    from ..io.safetensors_io import TensorSource
    from ..model.handle import FAMILY_LABELS
    from .lora_stack import trigger_words

    path = Path(path)
    try:
        src = TensorSource(path)
    except LoraLabError as e:
        raise LoraInfoError(422, str(e)) from None
    meta = {str(k): str(v) for k, v in (src.metadata or {}).items()}
    stats = _layer_stats(src)
    if not stats["kinds"]:
        raise LoraInfoError(422, f"{path.name}: no LoRA layers in this file ({len(src.shapes)} tensors)")
    if stats["alpha"] is None and meta.get("ss_network_alpha"):
        try:
            stats["alpha"] = float(meta["ss_network_alpha"])
        except ValueError:
            pass
    family = family_from_shapes(src.shapes) or family_from_metadata(meta)
    tags = tag_counts(meta)
    return {
        "name": name if name is not None else path.name,
        "size_bytes": path.stat().st_size,
        "family": family,
        "family_label": FAMILY_LABELS.get(family) if family else None,
        "trigger_words": trigger_words(path, meta),
        "tags": [{"tag": t, "count": n} for t, n in tags[:TOP_TAGS]],
        "tag_total": len(tags),
        **stats,
        "training": {k: meta[k] for k in TRAINING_KEYS if meta.get(k)},
        "sidecars": read_sidecars(path),
    }


def resolve_info_name(name: str) -> Path:
    """The file `name` names inside the loras folder(s); LoraInfoError 400 / 404 otherwise."""
    from ..io import paths
    from .lora_stack import resolve_lora

    if not isinstance(name, str) or not name.strip():
        raise LoraInfoError(400, "give ?name=<a LoRA file name inside the loras folder>")
    if Path(name.replace("\\", "/")).suffix.lower() not in (*LORA_EXTENSIONS, ""):
        raise LoraInfoError(400, f"{name!r} is not a LoRA file name (expected one of {LORA_EXTENSIONS})")
    try:
        paths.resolve("loras", name, must_exist=False)  # refuses absolute paths, '..', escaping links
    except ModelPathError as e:
        raise LoraInfoError(400, str(e)) from None
    try:
        return resolve_lora(name)
    except ModelPathError as e:
        raise LoraInfoError(404, str(e)) from None


def lora_info(name: str) -> dict:
    """Info for a LoRA name as the nodes take it (relative to the loras folder)."""
    return describe_lora(resolve_info_name(name), name)


def lora_list(extra_names=()) -> dict:
    """{"names": every LoRA name (relative, '/'-separated), "folders": their sub-folders}.

    `extra_names` are listed too (the edge passes the demo LoRAs, written on first use).
    """
    from ..io.paths import list_names

    names = list_names("loras", LORA_EXTENSIONS)
    names += [n for n in extra_names if n not in names]
    folders = sorted({n.rsplit("/", 1)[0] for n in names if "/" in n})
    return {"names": sorted(names, key=str.lower), "folders": folders}
