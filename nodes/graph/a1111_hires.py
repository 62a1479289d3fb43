"""A1111's hires fix in both directions: the second pass a `parameters` text describes, and the
`Hires ...` fields for a graph that has one.

A1111 (modules/processing.py, StableDiffusionProcessingTxt2Img) samples at `Size`, then:
- target size (calculate_target_resolution): `Hires upscale: s` gives int(W*s) x int(H*s);
  `Hires resize: WxH` fits the first pass's aspect to cover W x H (a 0 keeps the aspect)
  and crops the latent to W x H centrally ("truncate");
- upscale: a "Latent ..." upscaler interpolates the latent (shared.latent_upscale_modes:
  torch interpolate with a mode and antialias flag); any other upscaler decodes, resizes the
  8-bit picture (Lanczos / Nearest with PIL, ESRGAN & co. with their models) and encodes;
- second pass: img2img with `Hires steps` (0 = Steps) on the tail of a schedule of
  int(steps / denoise) steps (setup_img2img_steps), which is ComfyUI's KSampler denoise rule,
  with fresh noise drawn from the seed at the new size (a new ImageRNG), `Hires sampler`,
  `Hires schedule type`, `Hires prompt`, `Hires negative prompt`, `Hires CFG Scale` (Forge)
  when given, else the first pass's.

Here: Sample -> LatentUpscale (or ImageScale on the decoded picture) -> Sample with denoise.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..io.png_params import parse_size
from .workflow_ui import WorkflowError

# A1111 latent upscaler -> (the LatentUpscale method here, why it is not exactly A1111's or None).
LATENT_MODES = {
    "Latent": ("bilinear", None),
    "Latent (antialiased)": ("bilinear", None),  # antialiasing changes nothing when enlarging (<= 6e-6)
    "Latent (bicubic)": ("bicubic", None),
    "Latent (bicubic antialiased)": ("bicubic", ("A1111 interpolates with torch's antialiased bicubic "
                                                 "(another kernel); plain bicubic here")),
    "Latent (nearest)": ("nearest-exact", None),  # equal to nearest for whole-number scales, see _latent_note
    "Latent (nearest-exact)": ("nearest-exact", None),
}
# Pixel upscalers that are plain resizes of the decoded 8-bit picture (modules/upscaler.py).
PIXEL_MODES = {"Lanczos": "lanczos", "None": "lanczos", "Nearest": "nearest-exact"}
FALLBACK_PIXEL = "lanczos"
HIRES_KEYS = ("Hires upscale", "Hires resize", "Hires steps", "Hires upscaler")
USED_HIRES = set(HIRES_KEYS) | {"Denoising strength", "Hires sampler", "Hires schedule type", "Hires prompt",
                                "Hires negative prompt", "Hires CFG Scale"}
DEFAULT_DENOISE = 0.75  # StableDiffusionProcessingTxt2Img.denoising_strength


@dataclass
class HiresPlan:
    """The second pass: how to upscale, to what size, and its own settings (None = the first pass's)."""

    method: str  # LatentUpscale / ImageScale method
    pixel: bool  # True: upscale the decoded picture (ImageScale), False: the latent
    width: int
    height: int
    denoise: float
    steps: int | None = None
    cfg: float | None = None
    sampler: str | None = None  # A1111 name
    schedule: str | None = None  # A1111 label
    prompt: str | None = None
    negative: str | None = None
    notes: dict[str, str] = field(default_factory=dict)  # field -> how it differs from A1111

    def __post_init__(self):
        if not (0.0 <= self.denoise <= 1.0):
            raise WorkflowError(f"A1111 parameters: Denoising strength: {self.denoise} must be between 0 and 1")
        if self.width < 8 or self.height < 8:
            raise WorkflowError(f"A1111 parameters: hires size {self.width}x{self.height} is too small")


def target_size(width: int, height: int, scale: float, resize_x: int, resize_y: int) -> tuple[int, int, int, int]:
    """A1111's calculate_target_resolution: (upscale_to_x, upscale_to_y, final width, final height)."""
    if resize_x == 0 and resize_y == 0:
        w, h = int(width * scale), int(height * scale)
        return w, h, w, h
    if resize_y == 0:
        w, h = resize_x, resize_x * height // width
        return w, h, w, h
    if resize_x == 0:
        w, h = resize_y * width // height, resize_y
        return w, h, w, h
    if width / height < resize_x / resize_y:
        ux, uy = resize_x, resize_x * height // width
    else:
        ux, uy = resize_y * width // height, resize_y
    # truncate_x/y = (upscale_to - target) // 8 latent pixels are cut, split between both sides
    tx, ty = (ux - resize_x) // 8, (uy - resize_y) // 8
    return ux, uy, 8 * (ux // 8 - tx), 8 * (uy // 8 - ty)  # the latent is upscale_to // 8, then cut


def _float(fields: dict, key: str, default=None):
    value = fields.get(key)
    if value in (None, ""):
        return default
    try:
        return float(value)
    except ValueError:
        raise WorkflowError(f"A1111 parameters: {key}: {value!r} is not a number") from None


def _latent_note(mode: str, w0: int, h0: int, w: int, h: int) -> str | None:
    if mode == "Latent (nearest)" and (w % w0 or h % h0):
        return "A1111's 'nearest' and nearest-exact differ at a scale that is not a whole number"
    return LATENT_MODES[mode][1]


def hires_plan(fields: dict, width: int, height: int) -> HiresPlan | None:
    """The second pass the Hires fields describe (None when there is none)."""
    if not any(k in fields for k in HIRES_KEYS):
        return None
    notes = {}
    scale = _float(fields, "Hires upscale", 2.0)
    rx, ry = 0, 0
    if fields.get("Hires resize"):
        size = parse_size(fields["Hires resize"])
        if size is None:
            raise WorkflowError(f"A1111 parameters: Hires resize: {fields['Hires resize']!r} is not WIDTHxHEIGHT")
        rx, ry = size
    ux, uy, w, h = target_size(width, height, scale, rx, ry)
    if (ux, uy) != (w, h):
        notes["Hires resize"] = (f"{rx}x{ry}: A1111 enlarges to {ux}x{uy}, then crops the latent; here the first "
                                 "pass is cropped to the aspect, then enlarged (edges differ)")
    upscaler = fields.get("Hires upscaler") or "Latent"  # shared.latent_upscale_default_mode
    if upscaler in LATENT_MODES:
        method, pixel = LATENT_MODES[upscaler][0], False
        note = _latent_note(upscaler, width, height, w, h)
    elif upscaler in PIXEL_MODES:
        method, pixel = PIXEL_MODES[upscaler], True
        note = ("A1111 resizes with PIL's NEAREST on 8-bit pixels; nearest-exact on the decoded picture here"
                if upscaler == "Nearest" else None)
    else:
        method, pixel = FALLBACK_PIXEL, True
        note = (f"{upscaler!r} is an upscaler model (ESRGAN, SwinIR, ...), which is not run here: the first pass "
                "is enlarged with Lanczos instead, so fine detail differs")
    if note:
        notes["Hires upscaler"] = note
    denoise = _float(fields, "Denoising strength")
    if denoise is None:
        denoise = DEFAULT_DENOISE
        notes["Denoising strength"] = f"not given; A1111's default {DEFAULT_DENOISE} used"
    steps = _float(fields, "Hires steps", 0)
    return HiresPlan(method, pixel, w, h, denoise, steps=int(steps) or None, cfg=_float(fields, "Hires CFG Scale"),
                     sampler=fields.get("Hires sampler"), schedule=fields.get("Hires schedule type"),
                     prompt=fields.get("Hires prompt"), negative=fields.get("Hires negative prompt"), notes=notes)


# --------------------------------------------------------------------------- writing
_A1111_LATENT = {"bilinear": "Latent", "bicubic": "Latent (bicubic)", "nearest-exact": "Latent (nearest-exact)"}
_A1111_PIXEL = {"lanczos": "Lanczos"}


def hires_fields(first: dict, second: dict, upscale: dict, pixel: bool, a1111_sampler, a1111_schedule) -> dict:
    """The Hires fields, in A1111's order, for a second pass `second` (Sample-like inputs: steps,
    cfg, sampler_name, scheduler, prompt, denoise, width, height) after `first`, upscaled by the
    node `upscale` (LatentUpscale(By) / ImageScale(By) inputs). Values A1111 cannot express are
    left out (an 'area' upscale has no A1111 name)."""
    out = {"Denoising strength": second.get("denoise")}
    if second.get("sampler_name") != first.get("sampler_name"):
        out["Hires sampler"] = a1111_sampler(second.get("sampler_name"))
    if second.get("prompt") not in (None, first.get("prompt")):
        out["Hires prompt"] = second.get("prompt")
    if second.get("negative_prompt") not in (None, first.get("negative_prompt")):
        out["Hires negative prompt"] = second.get("negative_prompt")
    if second.get("scheduler") != first.get("scheduler"):
        out["Hires schedule type"] = a1111_schedule(second.get("scheduler"))
    if second.get("cfg") not in (None, first.get("cfg")):
        out["Hires CFG Scale"] = second.get("cfg")
    w0, h0 = first.get("width"), first.get("height")
    scale = upscale.get("scale_by")
    w, h = upscale.get("width"), upscale.get("height")
    if isinstance(scale, (int, float)) and not isinstance(scale, bool):
        out["Hires upscale"] = scale
    elif all(isinstance(v, int) and v > 0 for v in (w, h, w0, h0)):
        s = round(w / w0, 6)
        if int(w0 * s) == w and int(h0 * s) == h:
            out["Hires upscale"] = int(s) if s.is_integer() else s
        else:
            out["Hires resize"] = f"{w}x{h}"
    if second.get("steps") is not None:
        out["Hires steps"] = second.get("steps")
    method = upscale.get("upscale_method")
    out["Hires upscaler"] = (_A1111_PIXEL if pixel else _A1111_LATENT).get(method)
    return out
