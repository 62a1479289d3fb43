"""An API graph of our nodes from A1111 `parameters` text (a PNG made by A1111 or Civitai).

    Load Checkpoint (Model / Model hash) -> Sample (prompt with its <lora:...> tags and
    embeddings, negative prompt, Seed, Steps, CFG scale, Sampler + Schedule type, Size,
    Clip skip) -> Save Image
    with a hires fix: Sample -> LatentUpscale / ImageScale -> Sample (denoise) -> Save Image
    (a1111_hires: A1111's target size, latent and pixel upscalers, Hires steps / sampler / prompt)

- Checkpoint: by `Model hash` (A1111's 10-digit SHA-256 prefix, or the old 8-digit hash)
  and by `Model` (the file name without extension, anywhere under the checkpoints folder).
  When both are given and the named file's hash differs, a file with the hash wins; with
  none, the named file is used and the mismatch is reported.
- LoRAs stay as tags in the prompt (the Sample node applies them with A1111's semantics); a
  tag whose name no file answers to is renamed to the file whose hash `Lora hashes` gives.
- Sampler names map by png_params' tables; "Schedule type: Automatic" is the sampler's
  default in A1111 >= 1.9 (Karras for DPM++ 2M, ...); an old combined name ("DPM++ 2M
  Karras") is split; an old bare name had the model's own schedule ("normal").
- Seeds: Sample gets an A1111 Noise node (a1111_seed): A1111's per-image noise with its RNG
  source (CPU exactly, NV = its Philox; the default GPU, not written, is taken as NV),
  variation seed, seed resize and ENSD for the ancestral samplers' step noise. See README.

Fields that change the image but have no counterpart here (an upscaler model, ADetailer,
Eta, ...) are returned by name with the reason, and the loader logs them.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from ..io.errors import LoraLabError
from ..io.file_hashes import legacy_model_hash, lora_short_hash, model_short_hash
from ..io.model_names import find_model_file
from ..io.paths import CHECKPOINT_EXTENSIONS, LORA_EXTENSIONS, list_names, resolve
from ..io.png_params import (
    AUTOMATIC_SCHEDULES,
    COMFY_SAMPLERS,
    COMFY_SCHEDULES,
    parse_hashes_field,
    parse_infotext,
    parse_size,
    split_sampler,
)
from .a1111_hires import HIRES_KEYS, USED_HIRES, HiresPlan, hires_plan
from .a1111_seed import NOISE_NODE, SEED_FIELDS, noise_inputs
from .workflow_ui import WorkflowError

log = logging.getLogger(__name__)

# Fields the graph reproduces, or that only describe the files (read, not "unmapped").
USED = {"Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Model", "Model hash", "Clip skip",
        "Lora hashes", "TI hashes", "Hashes", "Version", "User", *SEED_FIELDS}
_TAG_NAME = re.compile(r"<(lora|lyco):([^:>]+)")


@dataclass
class A1111Graph:
    prompt: dict  # the API graph
    unmapped: dict[str, str] = field(default_factory=dict)  # field -> why it is not reproduced


def _int(fields: dict, key: str, default: int | None = None) -> int | None:
    value = fields.get(key)
    if value in (None, ""):
        return default
    try:
        return int(float(value))
    except ValueError:
        raise WorkflowError(f"A1111 parameters: {key}: {value!r} is not a number") from None


def _sampler(fields: dict, prefix: str = "") -> tuple[str, str]:
    """(ComfyUI sampler, ComfyUI scheduler) from Sampler / Schedule type (prefix "Hires ": the second pass's)."""
    from ..sampling.sampler_names import SAMPLER_NAMES, SCHEDULER_NAMES

    raw = fields.get("Sampler") or "Euler a"  # A1111's default sampler
    a1111, schedule = split_sampler(raw, fields.get("Schedule type"))
    if prefix:
        raw = fields.get(f"{prefix}sampler") or a1111
        a1111, schedule = split_sampler(raw, fields.get(f"{prefix}schedule type") or schedule)
    sampler = COMFY_SAMPLERS.get(a1111) or (a1111 if a1111 in SAMPLER_NAMES else None)
    if sampler is None:
        raise WorkflowError(f"A1111 parameters: {prefix}Sampler: {raw!r} has no counterpart here "
                            f"(known: {', '.join(sorted(COMFY_SAMPLERS))})")
    if "Schedule type" not in fields and schedule == "Automatic":
        schedule = "Normal"  # before 1.9 a bare name used the model's own sigmas
    if schedule == "Automatic":
        return sampler, AUTOMATIC_SCHEDULES.get(a1111, "normal")
    scheduler = COMFY_SCHEDULES.get(schedule) or (schedule if schedule in SCHEDULER_NAMES else None)
    if scheduler is None:
        raise WorkflowError(f"A1111 parameters: {prefix}Schedule type: {schedule!r} has no counterpart here "
                            f"(known: {', '.join(sorted(COMFY_SCHEDULES))})")
    return sampler, scheduler


def _hash_matches(path, want: str) -> bool:
    want = want.lower()
    if len(want) == 8:
        return legacy_model_hash(path) == want
    return model_short_hash(path)[: len(want)] == want[:10]


def find_checkpoint(name: str | None, want_hash: str | None, unmapped: dict) -> str:
    """The checkpoint name (relative to the checkpoints folder) for Model / Model hash."""
    from ..demo.demo import DEMO_NAME

    if name and name == DEMO_NAME.rsplit(".", 1)[0]:
        return DEMO_NAME  # written on first use by the loader
    by_name = None
    if name:
        try:
            by_name = find_model_file("checkpoints", name, CHECKPOINT_EXTENSIONS)
        except LoraLabError as e:
            if "ambiguous" in str(e) and not want_hash:
                raise WorkflowError(f"A1111 parameters: Model: {e}") from None
    if by_name is not None and (not want_hash or _hash_matches(by_name, want_hash)):
        return _rel("checkpoints", by_name)
    if want_hash:
        for rel in list_names("checkpoints", CHECKPOINT_EXTENSIONS):
            path = resolve("checkpoints", rel)
            if path.is_file() and _hash_matches(path, want_hash):
                if name:
                    log.info("Model %r found by its hash %s: %s", name, want_hash, rel)
                return rel
    if by_name is not None:
        unmapped["Model hash"] = (f"{want_hash} matches no checkpoint; using {by_name.name} "
                                  f"(hash {model_short_hash(by_name)}) by its name")
        return _rel("checkpoints", by_name)
    raise WorkflowError(f"A1111 parameters: no checkpoint for Model: {name!r}, Model hash: {want_hash!r} "
                        "in the checkpoints folder")


def _rel(kind: str, path) -> str:
    from ..io.paths import folders

    for folder in folders(kind):
        try:
            return path.relative_to(folder.resolve()).as_posix()
        except ValueError:
            continue
    return path.name


def _lora_by_hash(want: str) -> str | None:
    from ..io.safetensors_io import read_header

    for rel in list_names("loras", LORA_EXTENSIONS):
        path = resolve("loras", rel)
        try:
            meta = read_header(path)[1] if path.suffix.lower() == ".safetensors" else {}
            if lora_short_hash(path, meta) == want.lower()[:12]:
                return rel.rsplit(".", 1)[0]
        except (LoraLabError, OSError):
            continue
    return None


def _rename_lora_tags(prompt: str, hashes: dict, unmapped: dict) -> str:
    """Tags whose name finds no file are renamed to the file with the hash `Lora hashes` gives."""
    from ..demo.demo_lora import DEMO_LORA_NAMES

    def fix(m: re.Match) -> str:
        name = m.group(2).strip()
        if name in DEMO_LORA_NAMES or name.rsplit(".", 1)[0] in {n.rsplit(".", 1)[0] for n in DEMO_LORA_NAMES}:
            return m.group(0)
        try:
            find_model_file("loras", name, LORA_EXTENSIONS, alias_key="ss_output_name")
            return m.group(0)
        except LoraLabError:
            pass
        want = hashes.get(name.replace(":", "").replace(",", ""))
        found = _lora_by_hash(want) if want else None
        if found is None:
            unmapped[f"<{m.group(1)}:{name}>"] = (f"no LoRA named {name!r}" + (f" or with hash {want}" if want else "")
                                                 + " in the loras folder")
            return m.group(0)
        log.info("LoRA %r found by its hash %s: %s", name, want, found)
        return f"<{m.group(1)}:{found}"

    return _TAG_NAME.sub(fix, prompt)


def _unmapped_fields(fields: dict) -> dict[str, str]:
    out = {}
    for key, value in fields.items():
        if key in USED:
            continue
        if key in USED_HIRES and any(k in fields for k in HIRES_KEYS):
            continue  # the hires second pass (a1111_hires)
        if key == "Denoising strength":
            out[key] = f"{value} (img2img: the source picture is not in the parameters; text to image here)"
        elif key.startswith("Hires"):
            out[key] = f"{value} (hires fix: not reproduced; the second pass uses the first pass's setting)"
        else:
            out[key] = f"{value} (not reproduced)"
    return out


def graph_from_parameters(text: str, name: str = "a1111") -> A1111Graph:
    """The API graph that A1111 `parameters` text describes, and what it cannot reproduce."""
    prompt, negative, fields = parse_infotext(text)
    if not fields:
        raise WorkflowError("A1111 parameters: no settings line (Steps: ..., Sampler: ..., Seed: ...)")
    unmapped = _unmapped_fields(fields)
    sampler, scheduler = _sampler(fields)
    size = parse_size(fields.get("Size", "512x512"))
    if size is None:
        raise WorkflowError(f"A1111 parameters: Size: {fields.get('Size')!r} is not WIDTHxHEIGHT")
    ckpt = find_checkpoint(fields.get("Model"), fields.get("Model hash"), unmapped)
    prompt = _rename_lora_tags(prompt, parse_hashes_field(fields.get("Lora hashes", "")), unmapped)
    clip_skip = _int(fields, "Clip skip", 0)
    graph = {
        "1": {"class_type": "LoraLabCheckpointLoader", "inputs": {"ckpt_name": ckpt},
              "_meta": {"title": "Load Checkpoint"}},
        "2": {"class_type": "LoraLabSampler", "_meta": {"title": "Sample"}, "inputs": {
            "model": ["1", 0], "prompt": prompt, "negative_prompt": negative,
            "seed": _int(fields, "Seed", 0), "steps": _int(fields, "Steps", 20),
            "cfg": float(fields.get("CFG scale", 7.0)), "sampler_name": sampler, "scheduler": scheduler,
            "width": size[0], "height": size[1], "batch_size": 1, "clip_skip": clip_skip}},
        "3": {"class_type": "LoraLabSaveImage", "_meta": {"title": "Save Image"},
              "inputs": {"images": ["2", 0], "filename_prefix": f"a1111/{name}"}},
    }
    graph["6"] = {"class_type": NOISE_NODE, "_meta": {"title": "A1111 Noise"},
                  "inputs": noise_inputs(fields, unmapped)}
    graph["2"]["inputs"]["a1111_noise"] = ["6", 0]  # A1111's noise (the hires pass copies the link)
    plan = hires_plan(fields, size[0], size[1])
    if plan is not None:
        _add_hires(graph, plan, fields, unmapped)
    return A1111Graph(graph, unmapped)


def _add_hires(graph: dict, plan: HiresPlan, fields: dict, unmapped: dict) -> None:
    """Sample "2" -> upscale "4" -> second Sample "5" -> Save Image "3" (A1111's hires fix)."""
    first = graph["2"]["inputs"]
    unmapped.update({k: f"{fields.get(k, '')} ({why})".lstrip() for k, why in plan.notes.items()})
    crop = "center" if "Hires resize" in plan.notes else "disabled"
    if plan.pixel:
        graph["4"] = {"class_type": "ImageScale", "_meta": {"title": "Hires upscale"}, "inputs": {
            "image": ["2", 0], "upscale_method": plan.method, "width": plan.width, "height": plan.height,
            "crop": crop}}
    else:
        graph["4"] = {"class_type": "LatentUpscale", "_meta": {"title": "Hires upscale"}, "inputs": {
            "samples": ["2", 1], "upscale_method": plan.method, "width": plan.width, "height": plan.height,
            "crop": crop}}
    sampler, scheduler = _sampler(fields, "Hires ") if (plan.sampler or plan.schedule) else (
        first["sampler_name"], first["scheduler"])
    prompt = first["prompt"] if plan.prompt is None else _rename_lora_tags(
        plan.prompt, parse_hashes_field(fields.get("Lora hashes", "")), unmapped)
    second = {**first, "prompt": prompt,
              "negative_prompt": first["negative_prompt"] if plan.negative is None else plan.negative,
              "steps": plan.steps or first["steps"], "cfg": first["cfg"] if plan.cfg is None else plan.cfg,
              "sampler_name": sampler, "scheduler": scheduler, "width": plan.width, "height": plan.height,
              "denoise": plan.denoise, ("image" if plan.pixel else "latent"): ["4", 0]}
    graph["5"] = {"class_type": "LoraLabSampler", "_meta": {"title": "Hires second pass"}, "inputs": second}
    graph["3"]["inputs"]["images"] = ["5", 0]
