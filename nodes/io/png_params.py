"""A1111's `parameters` text ("infotext"): the names it uses, the text it writes, and a parser.

Written as A1111's `modules/processing.py` `create_infotext` writes it:

    <prompt>
    Negative prompt: <negative>                      (only when there is one)
    Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 512x768,
    Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, ..., Clip skip: 2, Hires upscale: 2, ...,
    Lora hashes: "ink: 0123456789ab, cat: ba9876543210", TI hashes: "bad_hands: ...", Version: ...

Fields keep A1111's order (FIELD_ORDER; others follow in the order given); a value with a
comma, colon or newline is JSON-quoted (A1111's `infotext_utils.quote`). Since A1111 1.9 the
sampler and its schedule are two fields ("Sampler: DPM++ 2M, Schedule type: Karras"); older
images combine them ("Sampler: DPM++ 2M Karras"), which `split_sampler` undoes.

The parser (`parse_infotext`) follows `infotext_utils.parse_generation_parameters`: the last
line holding at least three `key: value` pairs is the settings line, lines before it are the
prompt up to "Negative prompt:", which starts the negative prompt.
"""
from __future__ import annotations

import json
import re

# ComfyUI sampler name -> A1111's (sd_samplers_kdiffusion.samplers_k_diffusion, sd_samplers_timesteps).
A1111_SAMPLERS = {
    "euler": "Euler", "euler_ancestral": "Euler a", "heun": "Heun", "dpm_2": "DPM2", "dpm_2_ancestral": "DPM2 a",
    "lms": "LMS", "dpmpp_2s_ancestral": "DPM++ 2S a", "dpmpp_sde": "DPM++ SDE", "dpmpp_sde_gpu": "DPM++ SDE",
    "dpmpp_2m": "DPM++ 2M", "dpmpp_2m_sde": "DPM++ 2M SDE", "dpmpp_2m_sde_gpu": "DPM++ 2M SDE",
    "dpmpp_2m_sde_heun": "DPM++ 2M SDE Heun", "dpmpp_2m_sde_heun_gpu": "DPM++ 2M SDE Heun",
    "dpmpp_3m_sde": "DPM++ 3M SDE", "dpmpp_3m_sde_gpu": "DPM++ 3M SDE", "lcm": "LCM", "ddim": "DDIM",
    "uni_pc": "UniPC", "uni_pc_bh2": "UniPC",
}
# A1111 name -> ComfyUI's (the first ComfyUI name of each, CPU noise variants).
COMFY_SAMPLERS = {}
for _comfy, _a1111 in A1111_SAMPLERS.items():
    COMFY_SAMPLERS.setdefault(_a1111, _comfy)
# ComfyUI scheduler -> A1111's `Schedule type` label (modules/sd_schedulers.py; A1111 ported
# Simple, Normal, DDIM and Beta from ComfyUI, so those are the same schedules).
A1111_SCHEDULES = {
    "karras": "Karras", "exponential": "Exponential", "sgm_uniform": "SGM Uniform", "kl_optimal": "KL Optimal",
    "simple": "Simple", "normal": "Normal", "ddim_uniform": "DDIM", "beta": "Beta",
}
COMFY_SCHEDULES = {v: k for k, v in A1111_SCHEDULES.items()}
COMFY_SCHEDULES.update({"SGMUniform": "sgm_uniform", "Uniform": "normal"})
# "Automatic" = the sampler's default schedule in A1111 >= 1.9 (its samplers_k_diffusion
# options); samplers without one use the model's own discrete sigmas, which is ComfyUI's
# "normal" (timesteps evenly spaced from 999 to 0). DDIM walks A1111's uniform timesteps.
AUTOMATIC_SCHEDULES = {
    "DPM++ 2M": "karras", "DPM++ SDE": "karras", "DPM++ 2M SDE": "exponential", "DPM++ 2M SDE Heun": "exponential",
    "DPM++ 2S a": "karras", "DPM++ 3M SDE": "exponential", "DPM2": "karras", "DPM2 a": "karras",
    "DDIM": "ddim_uniform", "Restart": "karras",
}
# Old combined names: "<sampler> <suffix>" (A1111 < 1.9).
_SCHEDULE_SUFFIXES = ("Karras", "Exponential", "SGMUniform", "SGM Uniform", "Polyexponential")

# create_infotext's order; fields not listed come after, before the two that close it.
FIELD_ORDER = (
    "Steps", "Sampler", "Schedule type", "CFG scale", "Image CFG scale", "Seed", "Face restoration", "Size",
    "Model hash", "Model", "FP8 weight", "Cache FP16 weight for LoRA", "VAE hash", "VAE", "Variation seed",
    "Variation seed strength", "Seed resize from", "Denoising strength", "Conditional mask weight", "Clip skip",
    "ENSD", "RNG", "Tiling",
)
LAST_FIELDS = ("Version", "User")

_RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_RE_SIZE = re.compile(r"^(\d+)x(\d+)$")


def quote(text) -> str:
    """A1111's infotext_utils.quote: JSON-quote a value holding ',', ':' or a newline."""
    text = str(text)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text: str) -> str:
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _fmt(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # A1111 writes "CFG scale: 7" for 7.0
    return quote(value)


def format_infotext(prompt: str, negative: str, fields: dict) -> str:
    """The `parameters` text; fields whose value is None or '' are left out, as A1111 does."""
    present = {k: v for k, v in fields.items() if v is not None and v != ""}
    ordered = [k for k in FIELD_ORDER if k in present]
    ordered += [k for k in present if k not in FIELD_ORDER and k not in LAST_FIELDS]
    ordered += [k for k in LAST_FIELDS if k in present]
    settings = ", ".join(f"{k}: {_fmt(present[k])}" for k in ordered)
    negative_text = f"\nNegative prompt: {negative}" if negative else ""
    return f"{prompt or ''}{negative_text}\n{settings}".strip()


def hashes_field(pairs: list[tuple[str, str]]) -> str | None:
    """'name: hash, ...' for `Lora hashes` / `TI hashes`; A1111 drops ':' and ',' from names."""
    seen: dict[str, str] = {}
    for name, h in pairs:
        if h:
            seen[name.replace(":", "").replace(",", "")] = h
    return ", ".join(f"{k}: {v}" for k, v in seen.items()) or None


def parse_hashes_field(text: str) -> dict[str, str]:
    out = {}
    for part in (text or "").split(","):
        name, sep, h = part.rpartition(":")
        if sep and name.strip():
            out[name.strip()] = h.strip()
    return out


def parse_infotext(text: str) -> tuple[str, str, dict[str, str]]:
    """(prompt, negative prompt, {field: value as text}) of A1111 `parameters` text."""
    lines = (text or "").strip().split("\n")
    settings = ""
    if lines and len(_RE_PARAM.findall(lines[-1])) >= 3:
        settings = lines.pop()
    prompt, negative, in_negative = "", "", False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].strip()
        if in_negative:
            negative += ("" if not negative else "\n") + line
        else:
            prompt += ("" if not prompt else "\n") + line
    fields = {}
    for key, value in _RE_PARAM.findall(settings):
        fields[key.strip()] = unquote(value.strip())
    return prompt, negative, fields


def split_sampler(sampler: str, schedule: str | None) -> tuple[str, str]:
    """(A1111 sampler name, A1111 schedule label), undoing the pre-1.9 combined names."""
    sampler = (sampler or "").strip()
    if schedule:
        return sampler, schedule.strip()
    for suffix in _SCHEDULE_SUFFIXES:
        if sampler.endswith(" " + suffix) and sampler[: -len(suffix) - 1] in COMFY_SAMPLERS:
            return sampler[: -len(suffix) - 1], suffix
    return sampler, "Automatic"


def parse_size(text: str) -> tuple[int, int] | None:
    m = _RE_SIZE.match((text or "").strip())
    return (int(m.group(1)), int(m.group(2))) if m else None
