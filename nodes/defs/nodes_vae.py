"""VAE nodes of our own: Load VAE (a separate VAE file), VAE Encode / VAE Decode, and the helpers
Sample uses to start from a latent or an image. LATENT edges are ComfyUI's dict (raw VAE
latents), so they plug into ComfyUI's own latent nodes; VAE edges are ours (LORA_LAB_VAE, a
diffusers AutoencoderKL), distinct from ComfyUI's VAE objects."""
from __future__ import annotations

import contextlib

from .common import CATEGORY, MODEL, VAE


def _vae_of(model, vae):
    from ..model.runner_types import VaeHandle

    return vae if vae is not None else VaeHandle(model.vae, model.source)


@contextlib.contextmanager
def lean_memory(model, vae):
    """Sample's memory options (lean_memory.py): LORA_LAB_ATTENTION_SLICE slices attention in the
    UNet and the VAE for the block; LORA_LAB_VAE_TILE tiles its encode / decode. Yields (decode
    tiles, encode tiles), or None for whole images."""
    from .lean_memory import sliced, vae_tiles

    v = _vae_of(model, vae)
    tiles = vae_tiles(v, "LoraLabSampler")
    with sliced(model.unet, v.vae):
        yield tiles


def start_latent(model, latent, image, mask, vae, tiles=None):
    """Sample's starting LATENT: `latent`, or `image` encoded, or None (text to image); a mask is
    attached as a noise mask, or (9-channel inpainting UNet, image given) VAEEncodeForInpaint's way."""
    from ..io.errors import NodeInputError
    from ..sampling.img2img import inpaint_model, with_mask
    from ..sampling.latent_ops import encode_for_inpaint, vae_encode

    if latent is not None and image is not None:
        raise NodeInputError("LoraLabSampler", "image", "IMAGE", "give a latent or an image, not both")
    if image is not None:
        v = _vae_of(model, vae)
        if mask is not None and inpaint_model(model):
            return encode_for_inpaint(v, image, mask, 6)
        latent = {"samples": vae_encode(v, image, "LoraLabSampler", tiles and tiles[1])}
    if mask is not None and latent is None:
        raise NodeInputError("LoraLabSampler", "mask", "MASK", "a mask needs a latent or an image to inpaint")
    if latent is not None and not (isinstance(latent, dict) and "samples" in latent):
        raise NodeInputError("LoraLabSampler", "latent", type(latent).__name__, 'expected a LATENT {"samples": ...}')
    return None if latent is None else with_mask(latent, mask)


def decode_with(model, vae, samples, tiles=None):
    """tiles: lean_memory's (decode tiles, encode tiles), or None."""
    from ..sampling.latent_ops import vae_decode

    return vae_decode(_vae_of(model, vae), samples, "LoraLabSampler", tiles and tiles[0])


class LoraLabVAELoader:
    """Load VAE: a separate VAE file from the vae folder (e.g. an improved SD 1.5 or SDXL VAE)."""

    CATEGORY = CATEGORY
    RETURN_TYPES = (VAE,)
    RETURN_NAMES = ("vae",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        from .core_loaders import vae_names

        return {"required": {"vae_name": (vae_names(), {"tooltip": "file in the vae folder"})}}

    def load(self, vae_name):
        from .core_loaders import load_vae_named

        return (load_vae_named("LoraLabVAELoader", vae_name),)


class LoraLabVAEEncode:
    """VAE Encode: IMAGE -> LATENT with the model's VAE (or the given one)."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",), "model": (MODEL,)}, "optional": {"vae": (VAE,)}}

    def encode(self, image, model, vae=None):
        from ..sampling.latent_ops import vae_encode
        from .lean_memory import lean_vae

        v = _vae_of(model, vae)
        with lean_vae(v, "LoraLabVAEEncode") as tiles:
            return ({"samples": vae_encode(v, image, "LoraLabVAEEncode", tiles and tiles[1])},)


class LoraLabVAEDecode:
    """VAE Decode: LATENT -> IMAGE with the model's VAE (or the given one)."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    FUNCTION = "decode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"latent": ("LATENT",), "model": (MODEL,)}, "optional": {"vae": (VAE,)}}

    def decode(self, latent, model, vae=None):
        from ..sampling.latent_ops import vae_decode
        from .lean_memory import lean_vae

        v = _vae_of(model, vae)
        with lean_vae(v, "LoraLabVAEDecode") as tiles:
            return (vae_decode(v, latent["samples"], "LoraLabVAEDecode", tiles and tiles[0]),)


NODE_CLASS_MAPPINGS = {"LoraLabVAELoader": LoraLabVAELoader, "LoraLabVAEEncode": LoraLabVAEEncode,
                       "LoraLabVAEDecode": LoraLabVAEDecode}
NODE_DISPLAY_NAME_MAPPINGS = {"LoraLabVAELoader": "Load VAE (LoRA Lab)", "LoraLabVAEEncode": "VAE Encode (LoRA Lab)",
                              "LoraLabVAEDecode": "VAE Decode (LoRA Lab)"}
