"""How many of ComfyUI_examples' SD 1.x / 2.x / SDXL graphs run headless, and why the others don't.

For every image / JSON of a ComfyUI_examples checkout (or a bare git mirror of it) that carries a
graph: read it as `lora-lab run FILE` does (workflow.load_workflow: a PNG's `prompt` chunk, else
its UI `workflow` converted by our converter; WebP, which `lora-lab run` does not read, from the
EXIF tags ComfyUI writes, for the family count only), tell the model family from the model names
and node types, and for SD 1.x / 2.x / SDXL graphs validate against the runner registry and RUN
them with tiny stand-in models of the right family (nodes/model/tiny_models.py) written under
the names the graph asks for, in a temp models folder. Input images come from the examples repo.
The graph's own settings are kept, except: sizes scaled so the longest side is --max-side px,
batch 1, steps capped at --max-steps (KSamplerAdvanced's start/end scaled with them), input
images downscaled the same way. When a PNG's `prompt` chunk fails validation but its UI
workflow converts to a different graph, that one is tried too (reported as such).

Run:  python bench/comfy_examples.py EXAMPLES [--inputs DIR]... [--max-side 64] [--max-steps 3] [--only TEXT]
(--inputs: more folders to take input pictures from, e.g. ComfyUI's input/ with its example.png)
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import example_stand_ins as stand_ins

SD_FAMILIES = ("SD 1.x", "SD 2.x", "SDXL")
# model-name patterns, first match wins: (regex, family)
NAME_FAMILIES = (
    (r"flux", "Flux"), (r"sd3|sd_3", "SD3"), (r"cascade", "Stable Cascade"), (r"aura_?flow", "AuraFlow"),
    (r"hunyuan", "Hunyuan"), (r"lumina", "Lumina"), (r"hidream", "HiDream"), (r"qwen", "Qwen-Image"),
    (r"omnigen", "OmniGen"), (r"chroma", "Chroma"), (r"cosmos", "Cosmos"), (r"wan2|wan_", "Wan (video)"),
    (r"ltx", "LTXV (video)"), (r"mochi", "Mochi (video)"), (r"z_image", "Z-Image"), (r"zero123", "Zero123"),
    (r"\bsvd|stable_video", "SVD (video)"), (r"stable_audio|ace_step", "audio"),
    (r"xl", "SDXL"), (r"v2-|sd21|sd2|512-inpainting|768|wd-1-5|wd-illusion", "SD 2.x"),
)
# node types only other families use (part of the id, first match wins), when no model name told
NODE_FAMILIES = (
    ("StableCascade_", "Stable Cascade"), ("SVD_img2vid", "SVD (video)"), ("LTXV", "LTXV (video)"),
    ("Wan", "Wan (video)"), ("Cosmos", "Cosmos"), ("Mochi", "Mochi (video)"), ("StableZero123", "Zero123"),
    ("Hunyuan", "Hunyuan"), ("QuadrupleCLIPLoader", "HiDream"), ("FluxGuidance", "Flux"), ("ModelSamplingFlux", "Flux"),
    ("EmptySD3LatentImage", "SD3-class (Flux/SD3/...)"), ("ModelSamplingSD3", "SD3-class (Flux/SD3/...)"),
    ("ModelSamplingAuraFlow", "AuraFlow-class"), ("ImageOnlyCheckpointLoader", "SVD (video)"),
)
MODEL_FILE = re.compile(r"\.(safetensors|ckpt|pt|pth|bin|gguf|sft)$", re.IGNORECASE)
# node type -> the feature it needs (the reason a graph does not run headless)
FEATURES = (
    (r"ControlNet|T2IAdapter", "ControlNet / T2I-Adapter"), (r"GLIGEN", "GLIGEN"),
    (r"unCLIP|CLIPVision", "unCLIP / CLIP vision (revision)"), (r"Hypernetwork", "hypernetworks"),
    (r"UpscaleModel|ImageUpscaleWithModel", "upscale models (ESRGAN)"), (r"ModelMerge|CLIPMerge", "model merging"),
    (r"SamplerCustom|KSamplerSelect|Scheduler$|Guider$|RandomNoise", "custom sampling (SamplerCustom*)"),
    (r"ModelSampling", "ModelSampling* (LCM / EDM / v-pred overrides)"), (r"LatentComposite", "LatentComposite"),
    (r"ImagePadForOutpaint", "ImagePadForOutpaint (outpainting)"), (r"InstructPixToPix", "InstructPix2Pix conditioning"),
)


@dataclass
class Example:
    file: str
    family: str = "?"
    result: str = ""
    reasons: list = field(default_factory=list)  # grouping keys for a graph that did not run
    ran: str = ""  # "", "prompt" (as lora-lab run reads it) or "ui" (from its UI workflow)
    seconds: float = 0.0


# ------------------------------------------------------------------------------------ files
def example_files(src: Path, work: Path) -> tuple[Path, list[Path], list[str]]:
    """(root, graph-bearing candidates, files the mirror lists but lacks); a bare git dir is extracted."""
    absent = []
    if (src / "objects").is_dir() and (src / "HEAD").is_file():
        root = work / "examples"
        listing = subprocess.run(["git", "-C", str(src), "ls-tree", "-r", "-z", "HEAD"], check=True,
                                 capture_output=True).stdout.decode().split("\0")
        for row in filter(None, listing):
            meta, path = row.split("\t", 1)
            blob = subprocess.run(["git", "-C", str(src), "cat-file", "blob", meta.split()[2]], check=False,
                                  capture_output=True)
            if blob.returncode:
                absent.append(path)
                continue
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_bytes(blob.stdout)
    else:
        root = src
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".png", ".json", ".webp") and ".git" not in p.parts)
    return root, files, sorted(a for a in absent if a.lower().endswith((".png", ".json", ".webp")))


def webp_graph(path: Path) -> tuple[dict | None, dict | None]:
    """(prompt, UI workflow) from the EXIF tags SaveAnimatedWEBP writes: 0x0110 'prompt:{...}', 0x010F 'workflow:{...}'."""
    from PIL import Image

    with Image.open(path) as im:
        exif = im.getexif()
    found = {}
    for tag in (0x0110, 0x010F):
        key, _, body = str(exif.get(tag, "")).partition(":")
        if key in ("prompt", "workflow"):
            found[key] = json.loads(body)
    return found.get("prompt"), found.get("workflow")


def read_graphs(path: Path, registry, names):
    """(graph as `lora-lab run` reads it, or None; the UI workflow converted when it differs (or why it
    does not convert); the UI workflow; a note when `lora-lab run` does not read the file)."""
    from lora_lab.nodes.graph import workflow
    from lora_lab.nodes.io.errors import LoraLabError

    if path.suffix.lower() == ".webp":
        prompt, ui = webp_graph(path)
        return prompt, None, ui, "webp (lora-lab run reads .json/.png only)"
    wf = workflow.load_workflow(path, registry, names)  # WorkflowError: no graph, or one we cannot read
    alt = None
    if path.suffix.lower() == ".png" and wf.ui is not None:
        chunks = workflow.read_png_chunks(path)
        if workflow.is_ui_graph(chunks.get("workflow")) and "prompt" in chunks:
            try:
                alt = workflow.parse_workflow(chunks["workflow"], registry, str(path), display_names=names).prompt
            except (LoraLabError, ValueError) as e:  # reported; the prompt chunk still runs
                alt = f"UI workflow not converted: {str(e).split(': ', 1)[-1][:100]}"
            if alt == wf.prompt:
                alt = None
    return wf.prompt, alt, wf.ui, ""


# ----------------------------------------------------------------------------------- family
def family_of_name(name: str) -> str | None:
    low = name.lower()
    if "refiner" in low:
        return "SDXL refiner"
    return next((fam for pat, fam in NAME_FAMILIES if re.search(pat, low)), None)


def model_names(prompt: dict, ui: dict | None) -> list[str]:
    """Model file names of the graph: its inputs, and the UI widgets (kept for nodes we have no schema
    of); the diffusion model's loaders (checkpoint / UNet) first, then the rest (text encoders, VAE...)."""
    nodes = [(n.get("class_type"), list((n.get("inputs") or {}).values())) for n in prompt.values()]
    nodes += [(n.get("type"), n["widgets_values"]) for n in (ui or {}).get("nodes", [])
              if isinstance(n.get("widgets_values"), list)]
    for sub in ((ui or {}).get("definitions") or {}).get("subgraphs") or []:
        nodes += [(n.get("type"), n["widgets_values"]) for n in sub.get("nodes", []) if isinstance(n.get("widgets_values"), list)]
    nodes.sort(key=lambda tv: not re.search(r"Checkpoint|UNET|Unet", str(tv[0])))
    names = [v for _, values in nodes for v in values if isinstance(v, str) and MODEL_FILE.search(v)]
    return list(dict.fromkeys(names))


def classify(prompt: dict, ui: dict | None = None) -> tuple[str, dict]:
    """(family, {checkpoint name: its family}): a model name of another family, else a node type only
    other families use, else the checkpoints' families (SD 1.x when the name has no SD 2.x/SDXL marker)."""
    types = {str(n.get("class_type")) for n in prompt.values()}
    other = [f for f in map(family_of_name, model_names(prompt, ui)) if f and f not in (*SD_FAMILIES, "SDXL refiner")]
    other += [fam for pat, fam in NODE_FAMILIES if any(pat in t for t in types)]
    ckpts = {n["inputs"]["ckpt_name"]: None for n in prompt.values()
             if isinstance((n.get("inputs") or {}).get("ckpt_name"), str)}
    if other:
        return other[0], ckpts
    sdxl_nodes = "CLIPTextEncodeSDXL" in types
    ckpts = {k: family_of_name(k) or ("SDXL" if sdxl_nodes else "SD 1.x") for k in ckpts}
    fams = [f for f in ckpts.values() if f in SD_FAMILIES]
    if not fams:
        return ("SDXL" if "SDXL refiner" in ckpts.values() else "none (no checkpoint)"), ckpts
    return "+".join(dict.fromkeys(fams)), ckpts


def write_stand_ins(prompt: dict, family: str, ckpt_families: dict, models: Path) -> None:
    from lora_lab.nodes.sampling.embeddings import prompt_embedding_names

    graph_fam = family.split("+")[0]
    for n in prompt.values():
        inputs = n.get("inputs") or {}
        for key, value in inputs.items():
            if not isinstance(value, str):
                continue
            if key == "ckpt_name" and ckpt_families.get(value) in SD_FAMILIES:
                stand_ins.write_checkpoint(models, value, ckpt_families[value])
            elif key == "lora_name":
                stand_ins.write_lora(models, value, graph_fam if family_of_name(value) not in SD_FAMILIES else family_of_name(value))
            elif key == "vae_name":
                stand_ins.write_vae(models, value, graph_fam)
            elif "embedding:" in value:
                for emb in prompt_embedding_names(value):
                    stand_ins.write_embedding(models, emb, graph_fam)


# ------------------------------------------------------------------------------------ capping
def _r8(v: float, lo: int = 8) -> int:
    return max(lo, round(v / 8) * 8)


def _num(inputs: dict, key: str) -> bool:
    return isinstance(inputs.get(key), (int, float)) and not isinstance(inputs.get(key), bool)


def cap_graph(prompt: dict, max_side: int, max_steps: int, image_sizes: dict) -> dict:
    """A copy at the graph's settings with sizes scaled to max_side, batch 1 and steps capped."""
    p = copy.deepcopy(prompt)
    sides = [v for n in p.values() if n.get("class_type") == "EmptyLatentImage"
             for k, v in n["inputs"].items() if k in ("width", "height") and isinstance(v, (int, float))]
    sides = sides or [max(s) for s in image_sizes.values()]
    f = min(1.0, max_side / max(sides)) if sides else 1.0
    areas = [v for n in p.values() if n.get("class_type") == "ConditioningSetArea"
             for k, v in n["inputs"].items() if k in ("width", "height") and isinstance(v, (int, float))]
    if areas:  # ConditioningSetArea's width / height are at least 64 px: scale less, keep the composition
        f = min(1.0, max(f, 64 / min(areas)))
    for n in p.values():
        t, i = n.get("class_type"), n.get("inputs") or {}
        def num(k, i=i):
            return _num(i, k)

        if t in ("EmptyLatentImage", "LatentUpscale", "ImageScale", "ConditioningSetArea"):
            for k in ("width", "height"):
                if num(k) and i[k] > 0:
                    i[k] = _r8(i[k] * f)
            for k in ("x", "y"):
                if num(k):
                    i[k] = _r8(i[k] * f, lo=0)
        if num("batch_size"):
            i["batch_size"] = 1
        if t == "RepeatLatentBatch" and num("amount"):
            i["amount"] = min(i["amount"], 2)
        if t in ("KSampler", "KSamplerAdvanced") and num("steps") and i["steps"] > max_steps:
            old, i["steps"] = i["steps"], max_steps
            for k in ("start_at_step", "end_at_step"):
                if num(k) and i[k] < old:
                    i[k] = round(i[k] * max_steps / old)
    return p


def stage_images(prompt: dict, roots: list, inputs: Path, max_side: int) -> tuple[dict, list[str]]:
    """Copy (downscaled) every LoadImage / LoadImageMask picture found in the roots; (sizes, missing)."""
    from PIL import Image

    sizes, missing = {}, []
    for n in prompt.values():
        name = (n.get("inputs") or {}).get("image")
        if n.get("class_type") not in ("LoadImage", "LoadImageMask") or not isinstance(name, str):
            continue
        found = [f for r in roots for f in sorted(Path(r).rglob(Path(name).name))]
        if not found:
            missing.append(name)
            continue
        with Image.open(found[0]) as im:
            sizes[name] = im.size
            im.thumbnail((max_side, max_side))
            (inputs / name).parent.mkdir(parents=True, exist_ok=True)
            im.save(inputs / name)
    return sizes, missing


# ------------------------------------------------------------------------------------- running
def features_of(problems: list) -> tuple[list[str], list[str]]:
    """(features the runner lacks, other validation problems) of a failed validation."""
    nodes, other = set(), set()
    for p in problems:
        if p["kind"] in ("comfyui_only", "unknown_node_type"):
            t = p["class_type"]
            nodes.add(next((f for pat, f in FEATURES if re.search(pat, t)), t))
        elif p["kind"] == "missing_input":
            other.add(f"PNG prompt chunk of an older ComfyUI: required input {p['class_type']}.{p['input']} missing")
        else:
            other.add(f"{p['kind']}: {p['class_type']}.{p['input']} = {p['value']!r}")
    return sorted(nodes), sorted(other)


def run_example(ex: Example, prompt, alt, ui, roots: list, work: Path, registry, args) -> None:
    from lora_lab.nodes.graph.executor import Executor
    from lora_lab.nodes.io.paths import standalone_dirs

    fam, ckpts = classify(prompt, ui)
    ex.family = fam
    if not any(f in fam for f in SD_FAMILIES):
        ex.result, ex.reasons = "out of scope", []
        return
    if "SDXL refiner" in ckpts.values():
        ex.result = "unsupported model: SDXL refiner checkpoint (loader reads SD 1.x/2.x/SDXL base)"
        ex.reasons = ["SDXL refiner checkpoint"]
        return
    models, out, inputs = work / "models", work / "output", work / "input"
    inputs.mkdir(parents=True, exist_ok=True)
    sizes, missing = stage_images(prompt, roots, inputs, args.max_side)
    if missing:
        ex.result, ex.reasons = f"missing input: {', '.join(missing)}", ["missing input image"]
        return
    write_stand_ins(prompt, fam, ckpts, models)
    tries = [("prompt", prompt)] + ([("ui", alt)] if isinstance(alt, dict) else [])
    # the nodes' own progress bars write to stderr (the CLI's --quiet silences them the same way)
    with standalone_dirs(models, out, inputs), open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
        for how, graph in tries:
            t0 = time.perf_counter()
            capped = cap_graph(graph, args.max_side, args.max_steps, sizes)
            res = Executor(registry, quiet=True).run(capped, name=Path(ex.file).stem)  # fresh cache: all nodes run
            ex.seconds += time.perf_counter() - t0
            if res.ok:
                ex.ran = how
                ex.result = "ran" if how == "prompt" else f"ran from its UI workflow ({ex.result})"
                warned = sorted({w["message"][:90] for w in res.warnings})
                ex.result += f"; {len(warned)} warning(s): {' | '.join(warned)}" if warned else ""
                ex.reasons = []
                return
            if res.problems:
                nodes, other = features_of(res.problems)
                ex.result = "; ".join(([f"unsupported nodes: {', '.join(nodes)}"] if nodes else []) + other)
                ex.reasons = nodes + other
            else:
                ex.result, ex.reasons = f"error: {res.error.splitlines()[0][:160]}", ["error in a supported graph"]
            if how == "prompt" and isinstance(alt, str):
                ex.result += f" ({alt})"


def report(examples: list[Example], absent: list[str], args) -> None:
    w = max(len(e.file) for e in examples)
    print(f"settings: sizes scaled to a longest side of {args.max_side} px, batch 1, steps capped at "
          f"{args.max_steps} (KSamplerAdvanced start/end scaled alike), input images downscaled; tiny stand-in "
          "models of each family under the graph's model names\n")
    print(f"{'example':<{w}}  {'family':<26}  result")
    for e in examples:
        print(f"{e.file:<{w}}  {e.family:<26}  {e.result}" + (f"  ({e.seconds:.1f} s)" if e.ran else ""))
    sd = [e for e in examples if any(f in e.family for f in SD_FAMILIES)]
    ran = [e for e in sd if e.ran]
    print(f"\n{len(ran)} of {len(sd)} SD 1.x/2.x/SDXL examples run headless "
          f"({sum(e.ran == 'prompt' for e in ran)} as `lora-lab run FILE` reads them, "
          f"{sum(e.ran == 'ui' for e in ran)} more from their UI workflow)")
    groups: dict = {}
    for e in sd:
        for r in e.reasons:
            groups.setdefault(r, []).append(Path(e.file).stem)
    print("why the others do not (an example can count under several reasons):")
    for r, files in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        print(f"  {len(files):>2}  {r}: {', '.join(files)}")
    other = collections.Counter(e.family for e in examples if e not in sd)
    print(f"\nout of scope: {len(examples) - len(sd)} files: " + ", ".join(f"{k} {n}" for k, n in other.most_common()))
    if absent:
        print(f"listed in the mirror but absent (large files not stored): {', '.join(absent)}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("examples", type=Path, help="ComfyUI_examples checkout, or a bare git mirror of it")
    ap.add_argument("--max-side", type=int, default=64)
    ap.add_argument("--max-steps", type=int, default=3)
    ap.add_argument("--only", default="", help="only files whose path contains this text")
    ap.add_argument("--inputs", action="append", default=[], type=Path, metavar="DIR",
                    help="another folder to take LoadImage pictures from (e.g. ComfyUI's input/); repeatable")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    import torch

    torch.set_num_threads(1)
    from lora_lab.nodes.defs import runner_registry as rr
    from lora_lab.nodes.io.errors import LoraLabError

    reg, names = rr.RUNNER_CLASS_MAPPINGS, rr.RUNNER_DISPLAY_NAME_MAPPINGS
    work = Path(tempfile.mkdtemp(prefix="comfy-examples-"))
    try:
        root, files, absent = example_files(args.examples, work)
        examples = []
        for path in files:
            rel = path.relative_to(root).as_posix()
            if args.only not in rel:
                continue
            ex = Example(rel)
            try:
                prompt, alt, ui, note = read_graphs(path, reg, names)
            except (LoraLabError, ValueError, OSError) as e:
                if "no ComfyUI 'prompt' or 'workflow' chunk" in str(e) or "neither an API" in str(e):
                    continue  # an input picture or a plain JSON file, not a graph
                ex.family, ex.result = "?", f"not readable: {str(e)[:160]}"
                examples.append(ex)
                continue
            if prompt is None:
                continue
            if note:
                ex.family, _ = classify(prompt, ui)
                ex.result = "out of scope" if ex.family not in SD_FAMILIES else f"not run: {note}"
            else:
                run_example(ex, prompt, alt, ui, [root, *args.inputs], work, reg, args)
            examples.append(ex)
        report(examples, absent, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
