"""ComfyUI's core latent and sampler nodes for the headless runner (ComfyUI 0.3.64 ids, inputs,
defaults), run by sampling/comfy_ksampler.py and sampling/latent_ops.py. LATENT is ComfyUI's
dict {"samples": raw VAE latents [B, 4, h, w], "noise_mask"?, "batch_index"?}; nodes return
new dicts and never change the one they received."""
from __future__ import annotations

MAX_RESOLUTION = 16384
MAX_SEED = 0xFFFFFFFFFFFFFFFF


def _sampler_names():
    from ..sampling.sampler_names import SAMPLER_NAMES

    return list(SAMPLER_NAMES)


def _scheduler_names():
    from ..sampling.sampler_names import SCHEDULER_NAMES

    return list(SCHEDULER_NAMES)


def run_ksampler(node, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent, **kw):
    from ..io.progress import Progress
    from ..sampling.comfy_ksampler import KSamplerSettings, ksampler

    from .lean_memory import sliced

    s = KSamplerSettings(int(seed), int(steps), float(cfg), sampler_name, scheduler, node=node, **kw)
    with sliced(getattr(model, "unet", None)), Progress(s.steps, desc=node) as bar:  # LORA_LAB_ATTENTION_SLICE
        return ksampler(model, s, positive, negative, latent, callback=lambda *a: bar.update(1))


class EmptyLatentImage:
    CATEGORY = "latent"
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "generate"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "width": ("INT", {"default": 512, "min": 16, "max": MAX_RESOLUTION, "step": 8}),
            "height": ("INT", {"default": 512, "min": 16, "max": MAX_RESOLUTION, "step": 8}),
            "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096}),
        }}

    def generate(self, width, height, batch_size=1):
        import torch

        return ({"samples": torch.zeros([batch_size, 4, height // 8, width // 8])},)


class KSampler:
    CATEGORY = "sampling"
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL",),
            "seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True}),
            "steps": ("INT", {"default": 20, "min": 1, "max": 10000}),
            "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}),
            "sampler_name": (_sampler_names(),),
            "scheduler": (_scheduler_names(),),
            "positive": ("CONDITIONING",),
            "negative": ("CONDITIONING",),
            "latent_image": ("LATENT",),
            "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}),
        }}

    def sample(self, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
               denoise=1.0):
        return (run_ksampler("KSampler", model, seed, steps, cfg, sampler_name, scheduler, positive, negative,
                             latent_image, denoise=float(denoise)),)


class KSamplerAdvanced:
    CATEGORY = "sampling"
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL",),
            "add_noise": (["enable", "disable"],),
            "noise_seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True}),
            "steps": ("INT", {"default": 20, "min": 1, "max": 10000}),
            "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}),
            "sampler_name": (_sampler_names(),),
            "scheduler": (_scheduler_names(),),
            "positive": ("CONDITIONING",),
            "negative": ("CONDITIONING",),
            "latent_image": ("LATENT",),
            "start_at_step": ("INT", {"default": 0, "min": 0, "max": 10000}),
            "end_at_step": ("INT", {"default": 10000, "min": 0, "max": 10000}),
            "return_with_leftover_noise": (["disable", "enable"],),
        }}

    def sample(self, model, add_noise, noise_seed, steps, cfg, sampler_name, scheduler, positive, negative,
               latent_image, start_at_step, end_at_step, return_with_leftover_noise, denoise=1.0):
        return (run_ksampler("KSamplerAdvanced", model, noise_seed, steps, cfg, sampler_name, scheduler, positive,
                             negative, latent_image, denoise=float(denoise), add_noise=add_noise != "disable",
                             start_step=int(start_at_step), last_step=int(end_at_step),
                             force_full_denoise=return_with_leftover_noise != "enable"),)


class VAEDecode:
    CATEGORY = "latent"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "decode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",), "vae": ("VAE",)}}

    def decode(self, vae, samples):
        from ..sampling.latent_ops import vae_decode
        from .lean_memory import lean_vae

        with lean_vae(vae, "VAEDecode") as tiles:  # LORA_LAB_VAE_TILE / LORA_LAB_ATTENTION_SLICE
            return (vae_decode(vae, samples["samples"], "VAEDecode", tiles and tiles[0]),)


class VAEEncode:
    CATEGORY = "latent"
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"pixels": ("IMAGE",), "vae": ("VAE",)}}

    def encode(self, vae, pixels):
        from ..sampling.latent_ops import vae_encode
        from .lean_memory import lean_vae

        with lean_vae(vae, "VAEEncode") as tiles:
            return ({"samples": vae_encode(vae, pixels, "VAEEncode", tiles and tiles[1])},)


def _temporal_inputs(what: str) -> dict:
    """The video inputs ComfyUI's tiled nodes carry; accepted (an SD VAE has no time axis) and unused."""
    return {"temporal_size": ("INT", {"default": 64, "min": 8, "max": 4096, "step": 4,
                                      "tooltip": f"Only used for video VAEs: Amount of frames to {what} at a time."}),
            "temporal_overlap": ("INT", {"default": 8, "min": 4, "max": 4096, "step": 4,
                                         "tooltip": "Only used for video VAEs: Amount of frames to overlap."})}


class VAEDecodeTiled:
    """ComfyUI's VAEDecodeTiled: the decode in overlapping tiles, blended (sampling/vae_tiling.py)."""

    CATEGORY = "_for_testing"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "decode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",), "vae": ("VAE",),
                             "tile_size": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 32}),
                             "overlap": ("INT", {"default": 64, "min": 0, "max": 4096, "step": 32}),
                             **_temporal_inputs("decode")}}

    def decode(self, vae, samples, tile_size, overlap=64, temporal_size=64, temporal_overlap=8):
        from ..sampling.latent_ops import vae_decode
        from ..sampling.vae_tiling import from_node

        from .lean_memory import sliced

        tiles = from_node(tile_size, overlap, vae.downscale_ratio, "VAEDecodeTiled")
        with sliced(vae.vae):
            return (vae_decode(vae, samples["samples"], "VAEDecodeTiled", tiles),)


class VAEEncodeTiled:
    """ComfyUI's VAEEncodeTiled: the encode in overlapping pixel tiles, blended."""

    CATEGORY = "_for_testing"
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"pixels": ("IMAGE",), "vae": ("VAE",),
                             "tile_size": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 64}),
                             "overlap": ("INT", {"default": 64, "min": 0, "max": 4096, "step": 32}),
                             **_temporal_inputs("encode")}}

    def encode(self, vae, pixels, tile_size, overlap, temporal_size=64, temporal_overlap=8):
        from ..sampling.latent_ops import vae_encode
        from ..sampling.vae_tiling import from_node

        from .lean_memory import sliced

        tiles = from_node(tile_size, overlap, 1, "VAEEncodeTiled")
        with sliced(vae.vae):
            return ({"samples": vae_encode(vae, pixels, "VAEEncodeTiled", tiles)},)


class VAEEncodeForInpaint:
    CATEGORY = "latent/inpaint"
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"pixels": ("IMAGE",), "vae": ("VAE",), "mask": ("MASK",),
                             "grow_mask_by": ("INT", {"default": 6, "min": 0, "max": 64, "step": 1})}}

    def encode(self, vae, pixels, mask, grow_mask_by=6):
        from ..sampling.latent_ops import encode_for_inpaint
        from .lean_memory import lean_vae

        with lean_vae(vae, "VAEEncodeForInpaint") as tiles:
            return (encode_for_inpaint(vae, pixels, mask, int(grow_mask_by), tiles and tiles[1]),)


class SetLatentNoiseMask:
    CATEGORY = "latent/inpaint"
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "set_mask"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",), "mask": ("MASK",)}}

    def set_mask(self, samples, mask):
        return ({**samples, "noise_mask": mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1]))},)


_LATENT_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "bislerp"]


class LatentUpscale:
    CATEGORY = "latent"
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "upscale"

    @classmethod
    def INPUT_TYPES(cls):
        size = {"default": 512, "min": 0, "max": MAX_RESOLUTION, "step": 8}
        return {"required": {"samples": ("LATENT",), "upscale_method": (list(_LATENT_METHODS),),
                             "width": ("INT", dict(size)), "height": ("INT", dict(size)),
                             "crop": (["disabled", "center"],)}}

    def upscale(self, samples, upscale_method, width, height, crop):
        from ..sampling.latent_ops import latent_upscale

        return (latent_upscale(samples, upscale_method, int(width), int(height), crop),)


class LatentUpscaleBy:
    CATEGORY = "latent"
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "upscale"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",), "upscale_method": (list(_LATENT_METHODS),),
                             "scale_by": ("FLOAT", {"default": 1.5, "min": 0.01, "max": 8.0, "step": 0.01})}}

    def upscale(self, samples, upscale_method, scale_by):
        from ..sampling.latent_ops import latent_upscale_by

        return (latent_upscale_by(samples, upscale_method, float(scale_by)),)


class RepeatLatentBatch:
    CATEGORY = "latent/batch"
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "repeat"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",), "amount": ("INT", {"default": 1, "min": 1, "max": 64})}}

    def repeat(self, samples, amount):
        from ..sampling.latent_ops import repeat_latent_batch

        return (repeat_latent_batch(samples, int(amount)),)


class LatentFromBatch:
    CATEGORY = "latent/batch"
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "frombatch"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",),
                             "batch_index": ("INT", {"default": 0, "min": 0, "max": 63}),
                             "length": ("INT", {"default": 1, "min": 1, "max": 64})}}

    def frombatch(self, samples, batch_index, length):
        from ..sampling.latent_ops import latent_from_batch

        return (latent_from_batch(samples, int(batch_index), int(length)),)


_CLASSES = (EmptyLatentImage, KSampler, KSamplerAdvanced, VAEDecode, VAEEncode, VAEDecodeTiled, VAEEncodeTiled,
            VAEEncodeForInpaint,
            SetLatentNoiseMask, LatentUpscale, LatentUpscaleBy, RepeatLatentBatch, LatentFromBatch)
NODE_CLASS_MAPPINGS = {c.__name__: c for c in _CLASSES}
NODE_DISPLAY_NAME_MAPPINGS = {"EmptyLatentImage": "Empty Latent Image", "KSampler": "KSampler",
                              "KSamplerAdvanced": "KSampler (Advanced)", "VAEDecode": "VAE Decode",
                              "VAEEncode": "VAE Encode", "VAEDecodeTiled": "VAE Decode (Tiled)",
                              "VAEEncodeTiled": "VAE Encode (Tiled)", "VAEEncodeForInpaint": "VAE Encode (for Inpainting)",
                              "SetLatentNoiseMask": "Set Latent Noise Mask", "LatentUpscale": "Upscale Latent",
                              "LatentUpscaleBy": "Upscale Latent By", "RepeatLatentBatch": "Repeat Latent Batch",
                              "LatentFromBatch": "Latent From Batch"}
