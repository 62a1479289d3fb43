"""The A1111 `parameters` text for an image, read off the API graph that made it.

The IMAGE edge carries only pixels, so the saver follows its `images` link back to the
sampler and reads the settings there: our Sample node, or ComfyUI's KSampler /
KSamplerAdvanced with their CLIPTextEncode prompts and EmptyLatentImage size. The model
chain behind the sampler gives the checkpoint (`Model`, `Model hash`) and the LoRAs applied
by Load LoRA / Stack LoRAs / LoraLoader nodes; those are written into the prompt as the
`<lora:...>` tags A1111 would need to make the same image, and all LoRAs (tags in the
prompt too) get `Lora hashes`, embeddings `TI hashes`, so A1111's PNG info and Civitai find
the files. Values are read when they are literals (or one hop from a primitive node).

A sampler whose latent / image comes through an upscale node from another sampler is a hires
fix: the base fields are the first pass's and a1111_hires writes the Hires ones. An A1111 Noise
node feeding the sampler gives the seed fields (a1111_seed), and then image i of a batch says
Seed + i (parameters_for_batch), as A1111 writes each image of a batch.
"""
from __future__ import annotations

import logging

from ..io.errors import LoraLabError
from ..io.file_hashes import embedding_short_hash, lora_short_hash, model_short_hash
from ..io.paths import resolve
from ..io.png_params import A1111_SAMPLERS, A1111_SCHEDULES, format_infotext, hashes_field

log = logging.getLogger(__name__)

SAMPLER_TYPES = ("LoraLabSampler", "KSampler", "KSamplerAdvanced")
CHECKPOINT_TYPES = ("LoraLabCheckpointLoader", "CheckpointLoaderSimple", "CheckpointLoader")


def _literal(graph: dict, value):
    """A literal input value, or the literal behind a one-hop link; None if computed."""
    if isinstance(value, list) and len(value) == 2 and str(value[0]) in graph:
        src = graph[str(value[0])]
        lits = [v for v in src.get("inputs", {}).values() if not isinstance(v, list)]
        return lits[0] if len(lits) == 1 else None
    return value


def _find_upstream(graph: dict, node_id: str, class_types: tuple, input_name: str):
    """The first node of one of `class_types` feeding `node_id` through `input_name` (walking inputs)."""
    seen = set()
    stack = [graph.get(str(node_id), {}).get("inputs", {}).get(input_name)]
    while stack:
        link = stack.pop()
        if not (isinstance(link, list) and len(link) == 2):
            continue
        nid = str(link[0])
        if nid in seen or nid not in graph:
            continue
        seen.add(nid)
        node = graph[nid]
        if node.get("class_type") in class_types:
            return nid, node
        stack.extend(v for v in node.get("inputs", {}).values() if isinstance(v, list))
    return None, None


def _model_chain(graph: dict, link) -> list[dict]:
    """Nodes along the `model` inputs from a sampler back to the checkpoint loader (nearest first)."""
    chain, seen = [], set()
    while isinstance(link, list) and len(link) == 2 and str(link[0]) in graph and str(link[0]) not in seen:
        seen.add(str(link[0]))
        node = graph[str(link[0])]
        chain.append(node)
        link = node.get("inputs", {}).get("model")
    return chain


def _num(value) -> str:
    f = float(value)
    return str(int(f)) if f.is_integer() else repr(round(f, 6))


def _tag(name: str, unet: float, text: float, lbw: str = "") -> str:
    stem = name.rsplit("/", 1)[-1]
    for ext in (".safetensors", ".ckpt", ".pt", ".pth", ".bin"):
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
    args = _num(text) if float(unet) == float(text) else f"{_num(text)}:{_num(unet)}"
    return f"<lora:{stem}:{args}{':lbw=' + lbw if lbw else ''}>"


def _node_loras(graph: dict, chain: list[dict]) -> list[tuple[str, str]]:
    """(lora name as given, A1111 tag) for each LoRA a loader node in the chain applies, in apply order."""
    from ..lora.lora_stack import parse_stack_text

    out = []
    for node in reversed(chain):
        ct, inp = node.get("class_type"), {k: _literal(graph, v) for k, v in node.get("inputs", {}).items()}
        if ct == "LoraLabLoraLoader" and isinstance(inp.get("lora_name"), str):
            bw = inp.get("block_weights") or ""
            out.append((inp["lora_name"], _tag(inp["lora_name"], inp.get("strength_unet", 1.0),
                                                inp.get("strength_text", 1.0), bw)))
        elif ct == "LoraLabLoraStack" and isinstance(inp.get("loras"), str):
            try:
                entries = parse_stack_text(inp["loras"])
            except LoraLabError:
                continue
            bw = inp.get("block_weights") or ""
            out += [(e.name, _tag(e.name, e.strength_unet, e.strength_text, e.block_weights or bw)) for e in entries]
        elif ct == "LoraLoader" and isinstance(inp.get("lora_name"), str):
            out.append((inp["lora_name"], _tag(inp["lora_name"], inp.get("strength_model", 1.0),
                                                inp.get("strength_clip", 1.0))))
    return out


def _lora_hash(name: str) -> str | None:
    from ..io.safetensors_io import read_header
    from ..lora.lora_stack import resolve_lora

    try:
        path = resolve_lora(name)
        meta = read_header(path)[1] if path.suffix.lower() == ".safetensors" else {}
        return lora_short_hash(path, meta)
    except (LoraLabError, OSError):
        return None  # a demo LoRA not written yet, or a missing file: A1111 writes no hash either


def _model_fields(ckpt_name) -> dict:
    if not isinstance(ckpt_name, str):
        return {}
    stem = ckpt_name.replace("\\", "/").rsplit("/", 1)[-1]
    stem = stem.rsplit(".", 1)[0] if "." in stem else stem
    try:
        return {"Model hash": model_short_hash(resolve("checkpoints", ckpt_name)), "Model": stem}
    except (LoraLabError, OSError):
        return {"Model": stem}


def _text_of(graph: dict, sampler_inputs: dict, name: str) -> str:
    """The text of the CLIPTextEncode feeding a KSampler's positive/negative input."""
    link = sampler_inputs.get(name)
    if isinstance(link, list) and len(link) == 2 and str(link[0]) in graph:
        node = graph[str(link[0])]
        if node.get("class_type") == "CLIPTextEncode":
            return str(_literal(graph, node.get("inputs", {}).get("text")) or "")
    return ""


def _core_settings(graph: dict, sid: str, node: dict) -> dict:
    """Our Sample node's inputs from a KSampler(Advanced) and the core nodes around it."""
    raw = node.get("inputs", {})
    inp = {k: _literal(graph, v) for k, v in raw.items()}
    out = {"prompt": _text_of(graph, raw, "positive"), "negative_prompt": _text_of(graph, raw, "negative"),
           "seed": inp.get("seed", inp.get("noise_seed")), "steps": inp.get("steps"), "cfg": inp.get("cfg"),
           "sampler_name": inp.get("sampler_name"), "scheduler": inp.get("scheduler")}
    _, latent = _find_upstream(graph, sid, ("EmptyLatentImage",), "latent_image")
    if latent is not None:
        out["width"] = _literal(graph, latent["inputs"].get("width"))
        out["height"] = _literal(graph, latent["inputs"].get("height"))
    pos = raw.get("positive")
    if isinstance(pos, list) and str(pos[0]) in graph:
        _, last = _find_upstream(graph, str(pos[0]), ("CLIPSetLastLayer",), "clip")
        if last is not None:
            layer = _literal(graph, last["inputs"].get("stop_at_clip_layer"))
            out["clip_skip"] = -int(layer) if isinstance(layer, int) else None
    return out


_UPSCALES = {"LatentUpscale": ("samples", False), "LatentUpscaleBy": ("samples", False),
             "ImageScale": ("image", True), "ImageScaleBy": ("image", True)}
_PASS_THROUGH = {"VAEEncode": "pixels", "VAEDecode": "samples"}


def _node_at(graph: dict, link):
    if isinstance(link, list) and len(link) == 2 and str(link[0]) in graph:
        return str(link[0]), graph[str(link[0])]
    return None, None


def _first_pass(graph: dict, sampler: dict):
    """(first sampler id, its node, the upscale node, pixel?) when `sampler` is a hires second pass:
    its latent / image comes through an upscale (and VAE encode / decode) from another sampler."""
    inputs = sampler.get("inputs", {})
    link = inputs.get("latent_image", inputs.get("latent", inputs.get("image")))
    upscale, pixel = None, False
    for _ in range(4):  # second <- [VAEEncode <-] upscale <- [VAEDecode <-] first
        nid, node = _node_at(graph, link)
        if node is None:
            return None
        ct = node.get("class_type")
        if ct in SAMPLER_TYPES:
            return (nid, node, upscale, pixel) if upscale is not None else None
        if ct in _UPSCALES and upscale is None:
            upscale, (key, pixel) = node, _UPSCALES[ct]
            link = node["inputs"].get(key)
        elif ct in _PASS_THROUGH:
            link = node["inputs"].get(_PASS_THROUGH[ct])
        else:
            return None
    return None


def _settings(graph: dict, sid: str, node: dict) -> dict:
    if node.get("class_type") == "LoraLabSampler":
        return {k: _literal(graph, v) for k, v in node.get("inputs", {}).items()}
    out = _core_settings(graph, sid, node)
    out["denoise"] = _literal(graph, node.get("inputs", {}).get("denoise"))
    return out


def _hires(graph: dict, sid: str, sampler: dict):
    """(first pass settings, Hires fields) for a second pass, or None."""
    from .a1111_hires import hires_fields

    found = _first_pass(graph, sampler)
    if found is None:
        return None
    fid, first_node, upscale, pixel = found
    first, second = _settings(graph, fid, first_node), _settings(graph, sid, sampler)
    if not isinstance(second.get("denoise"), (int, float)):
        log.warning("parameters: the second pass (node %s) has no denoise; no Hires fields written", sid)
        return None
    if second.get("seed") != first.get("seed"):
        log.warning("parameters: the second pass seed %s differs from the first pass's %s; A1111 draws both "
                    "from one seed (the first is written)", second.get("seed"), first.get("seed"))
    up = {k: _literal(graph, v) for k, v in upscale.get("inputs", {}).items()}
    fields = hires_fields(first, second, up, pixel, lambda n: A1111_SAMPLERS.get(n, n),
                          lambda n: A1111_SCHEDULES.get(n, n))
    if up.get("upscale_method") and fields.get("Hires upscaler") is None:
        log.warning("parameters: upscale method %r has no A1111 upscaler name; Hires upscaler left out",
                    up.get("upscale_method"))
    return first, fields, fid, first_node


def _noise_fields(graph: dict, sampler: dict) -> dict:
    """RNG / Variation seed / Seed resize from / ENSD from the A1111 Noise node feeding Sample."""
    from .a1111_seed import NOISE_NODE, noise_fields

    _, node = _node_at(graph, sampler.get("inputs", {}).get("a1111_noise"))
    if node is None or node.get("class_type") != NOISE_NODE:
        return {}
    return noise_fields({k: _literal(graph, v) for k, v in node.get("inputs", {}).items()})


def parameters_for_batch(graph: dict | None, unique_id, batch: int):
    """The `parameters` text of each image of a batch: one text for all, or (A1111 noise, whose
    image i is seed + i) a list with each image's own Seed / Variation seed, as A1111 writes."""
    first = parameters_for(graph, unique_id)
    if first is None or batch <= 1 or "RNG: " not in first.rsplit("\n", 1)[-1]:
        return first
    return [first] + [parameters_for(graph, unique_id, i) for i in range(1, batch)]


def parameters_for(graph: dict | None, unique_id, index: int = 0) -> str | None:
    """The `parameters` chunk text for the image saved by node `unique_id`, or None. `index`:
    the image's place in its batch (with A1111 noise its seed is A1111's seed + index)."""
    from ..lora.lora_stack import strip_prompt_loras
    from ..sampling.embeddings import prompt_embedding_names, resolve_embedding

    if not graph or unique_id is None:
        return None
    sid, sampler = _find_upstream(graph, unique_id, SAMPLER_TYPES, "images")
    if sampler is None:
        return None
    hires = _hires(graph, sid, sampler)
    hires_fields = {}
    if hires is not None:
        inp, hires_fields, sid, sampler = hires  # the base fields are the first pass's
    else:
        inp = _settings(graph, sid, sampler)
    chain = _model_chain(graph, sampler.get("inputs", {}).get("model"))
    loader = next((n for n in chain if n.get("class_type") in CHECKPOINT_TYPES), None)
    model = _model_fields(_literal(graph, loader["inputs"].get("ckpt_name"))) if loader else {}
    prompt, negative = str(inp.get("prompt") or ""), str(inp.get("negative_prompt") or "")
    node_loras = _node_loras(graph, chain)
    if node_loras:
        prompt = " ".join([prompt] + [tag for _, tag in node_loras]).strip()
    try:
        tag_names = [e.name for e in strip_prompt_loras(prompt)[1]]
    except LoraLabError:
        tag_names = []
    ti = []
    for name in prompt_embedding_names(prompt) + prompt_embedding_names(negative):
        try:
            ti.append((name, embedding_short_hash(resolve_embedding(name))))
        except (LoraLabError, OSError):
            continue
    sampler_name, scheduler = inp.get("sampler_name"), inp.get("scheduler")
    w, h = inp.get("width"), inp.get("height")
    clip_skip = inp.get("clip_skip")
    noise = _noise_fields(graph, sampler)
    sgm = noise.pop("SGM noise multiplier", None)
    seed = inp.get("seed")
    if index and noise and isinstance(seed, int):  # A1111's all_seeds / all_subseeds
        if noise.get("Variation seed strength") and isinstance(noise.get("Variation seed"), int):
            noise["Variation seed"] += index
        elif not noise.get("Variation seed strength"):
            seed += index
    fields = {
        "Steps": inp.get("steps"),
        "Sampler": A1111_SAMPLERS.get(sampler_name, sampler_name),
        "Schedule type": A1111_SCHEDULES.get(scheduler, scheduler),
        "CFG scale": inp.get("cfg"),
        "Seed": seed,
        "Size": f"{w}x{h}" if w and h else None,
        **model,
        "Clip skip": clip_skip if isinstance(clip_skip, int) and clip_skip > 1 else None,
        **noise,
        **hires_fields,
        "Lora hashes": hashes_field([(n.rsplit("/", 1)[-1], _lora_hash(n)) for n in tag_names]),
        "TI hashes": hashes_field(ti),
        "SGM noise multiplier": sgm,  # set while sampling, after the hashes
    }
    return format_infotext(prompt, negative, fields)
