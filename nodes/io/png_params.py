"""A1111-style `parameters` text for a saved image, read off the API graph that made it.

The IMAGE edge carries only pixels, so the saver follows its `images` link back through the
graph to the Sample node and reads the settings there (literal values only; inputs fed by
links from other nodes are resolved when they are literals of a primitive-like node).
"""
from __future__ import annotations

from .image_io import a1111_parameters

# ComfyUI sampler / scheduler names -> the names A1111 writes (for tools that parse them).
A1111_SAMPLERS = {
    "euler": "Euler", "euler_ancestral": "Euler a", "heun": "Heun", "dpm_2": "DPM2",
    "dpm_2_ancestral": "DPM2 a", "lms": "LMS", "dpmpp_2m": "DPM++ 2M", "dpmpp_2m_sde": "DPM++ 2M SDE",
    "dpmpp_sde": "DPM++ SDE", "ddim": "DDIM", "uni_pc": "UniPC",
}


def _literal(graph: dict, value):
    """A literal input value, or the literal behind a one-hop link; None if computed."""
    if isinstance(value, list) and len(value) == 2 and str(value[0]) in graph:
        src = graph[str(value[0])]
        lits = [v for v in src.get("inputs", {}).values() if not isinstance(v, list)]
        return lits[0] if len(lits) == 1 else None
    return value


def _find_upstream(graph: dict, node_id: str, class_type: str, input_name: str):
    """The first node of `class_type` feeding `node_id` through `input_name` (walking inputs)."""
    seen = set()
    link = graph.get(str(node_id), {}).get("inputs", {}).get(input_name)
    stack = [link]
    while stack:
        link = stack.pop()
        if not (isinstance(link, list) and len(link) == 2):
            continue
        nid = str(link[0])
        if nid in seen or nid not in graph:
            continue
        seen.add(nid)
        node = graph[nid]
        if node.get("class_type") == class_type:
            return nid, node
        stack.extend(v for v in node.get("inputs", {}).values() if isinstance(v, list))
    return None, None


def parameters_for(graph: dict | None, unique_id) -> str | None:
    """The `parameters` chunk text for the image saved by node `unique_id`, or None."""
    if not graph or unique_id is None:
        return None
    sid, sampler = _find_upstream(graph, unique_id, "LoraLabSampler", "images")
    if sampler is None:
        return None
    inp = {k: _literal(graph, v) for k, v in sampler.get("inputs", {}).items()}
    _, loader = _find_upstream(graph, sid, "LoraLabCheckpointLoader", "model")
    model = None
    if loader is not None:
        model = _literal(graph, loader.get("inputs", {}).get("ckpt_name"))
    sampler_name = inp.get("sampler_name")
    a1111 = A1111_SAMPLERS.get(sampler_name, sampler_name)
    if a1111 and inp.get("scheduler") == "karras":
        a1111 += " Karras"
    w, h = inp.get("width"), inp.get("height")
    settings = {
        "Steps": inp.get("steps"),
        "Sampler": a1111,
        "Schedule type": inp.get("scheduler"),
        "CFG scale": inp.get("cfg"),
        "Seed": inp.get("seed"),
        "Size": f"{w}x{h}" if w and h else None,
        "Model": model.rsplit(".", 1)[0] if isinstance(model, str) else None,
        "Clip skip": inp.get("clip_skip") or None,
    }
    return a1111_parameters(str(inp.get("prompt") or ""), str(inp.get("negative_prompt") or ""), settings)
