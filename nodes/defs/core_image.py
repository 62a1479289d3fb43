"""ComfyUI's core image nodes and the frontend's primitive nodes for the headless runner
(ComfyUI 0.3.64 ids, inputs, defaults). IMAGE [B, H, W, 3] float 0..1, MASK [B, H, W]."""
from __future__ import annotations

import logging
import sys

log = logging.getLogger(__name__)


def _input_images():
    from ..demo.demo_image import DEMO_IMAGE
    from ..io.paths import IMAGE_EXTENSIONS, list_names

    names = list_names("input", IMAGE_EXTENSIONS)
    if DEMO_IMAGE not in names:
        names.append(DEMO_IMAGE)  # written on first use
    return names


def _input_path(node: str, image: str):
    from ..demo.demo_image import DEMO_IMAGE, ensure_demo_image
    from ..io.errors import LoraLabError, NodeInputError
    from ..io.paths import resolve

    name = image.removesuffix(" [input]")  # ComfyUI's annotated name for the input folder
    try:
        if name == DEMO_IMAGE:
            ensure_demo_image()
        return resolve("input", name)
    except LoraLabError as e:
        raise NodeInputError(node, "image", image, str(e)) from None


class LoadImage:
    CATEGORY = "image"
    RETURN_TYPES = ("IMAGE", "MASK")
    FUNCTION = "load_image"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": (_input_images(), {"image_upload": True})}}

    def load_image(self, image):
        from ..io.image_load import load_image

        return load_image(_input_path("LoadImage", image))

    @classmethod
    def IS_CHANGED(cls, image):
        from ..io.image_load import file_hash

        return file_hash(_input_path("LoadImage", image))


class LoadImageMask:
    CATEGORY = "mask"
    RETURN_TYPES = ("MASK",)
    FUNCTION = "load_image"

    @classmethod
    def INPUT_TYPES(cls):
        from ..io.image_load import MASK_CHANNELS

        return {"required": {"image": (_input_images(), {"image_upload": True}), "channel": (list(MASK_CHANNELS),)}}

    def load_image(self, image, channel):
        from ..io.image_load import load_image_mask

        return (load_image_mask(_input_path("LoadImageMask", image), channel),)

    @classmethod
    def IS_CHANGED(cls, image, channel):
        from ..io.image_load import file_hash

        return file_hash(_input_path("LoadImageMask", image))


class SaveImage:
    """PNGs `<prefix>_<counter:05>_.png` with the prompt and workflow chunks, as ComfyUI writes them,
    plus the A1111 `parameters` text of the KSampler graph behind them (graph/a1111_write.py)."""

    CATEGORY = "image"
    RETURN_TYPES = ()
    FUNCTION = "save_images"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",), "filename_prefix": ("STRING", {"default": "ComfyUI"})},
                "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO", "unique_id": "UNIQUE_ID"}}

    def save_images(self, images, filename_prefix="ComfyUI", prompt=None, extra_pnginfo=None, unique_id=None):
        from ..graph.a1111_write import parameters_for_batch
        from ..io.image_io import save_images
        from ..io.paths import output_dir
        from .common import with_run_label

        paths = save_images(images, with_run_label(filename_prefix), prompt, extra_pnginfo,
                            parameters_for_batch(prompt, unique_id, len(images)), node="SaveImage")
        root = output_dir().resolve()
        ui = []
        for p in paths:
            sub = p.parent.relative_to(root).as_posix()
            ui.append({"filename": p.name, "subfolder": "" if sub == "." else sub, "type": "output"})
        return {"ui": {"images": ui}, "result": ()}


class PreviewImage:
    """ComfyUI shows these in the browser from a temp folder it empties; headless there is nobody to
    show them to, so nothing is written (use SaveImage for files)."""

    CATEGORY = "image"
    RETURN_TYPES = ()
    FUNCTION = "save_images"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",)}, "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    def save_images(self, images, prompt=None, extra_pnginfo=None):
        log.info("PreviewImage: %d image(s) %s not written (headless)", images.shape[0], tuple(images.shape[1:3]))
        return {"ui": {"images": []}, "result": ()}


class ImageScale:
    CATEGORY = "image/upscaling"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "upscale"

    @classmethod
    def INPUT_TYPES(cls):
        from ..sampling.latent_ops import IMAGE_UPSCALE_METHODS

        size = {"default": 512, "min": 0, "max": 16384, "step": 1}
        return {"required": {"image": ("IMAGE",), "upscale_method": (list(IMAGE_UPSCALE_METHODS),),
                             "width": ("INT", dict(size)), "height": ("INT", dict(size)),
                             "crop": (["disabled", "center"],)}}

    def upscale(self, image, upscale_method, width, height, crop):
        from ..sampling.latent_ops import image_scale

        return (image_scale(image, upscale_method, int(width), int(height), crop),)


class ImageScaleBy:
    CATEGORY = "image/upscaling"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "upscale"

    @classmethod
    def INPUT_TYPES(cls):
        from ..sampling.latent_ops import IMAGE_UPSCALE_METHODS

        return {"required": {"image": ("IMAGE",), "upscale_method": (list(IMAGE_UPSCALE_METHODS),),
                             "scale_by": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 8.0, "step": 0.01})}}

    def upscale(self, image, upscale_method, scale_by):
        from ..sampling.latent_ops import image_scale_by

        return (image_scale_by(image, upscale_method, float(scale_by)),)


def _primitive(node_id: str, kind: str, options: dict):
    class Primitive:
        CATEGORY = "utils/primitive"
        RETURN_TYPES = (kind,)
        FUNCTION = "execute"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"value": (kind, dict(options))}}

        def execute(self, value):
            return (value,)

    Primitive.__name__ = Primitive.__qualname__ = node_id
    return Primitive


_PRIMITIVES = {
    "PrimitiveString": _primitive("PrimitiveString", "STRING", {}),
    "PrimitiveStringMultiline": _primitive("PrimitiveStringMultiline", "STRING", {"multiline": True}),
    "PrimitiveInt": _primitive("PrimitiveInt", "INT", {"min": -sys.maxsize, "max": sys.maxsize,
                                                       "control_after_generate": True}),
    "PrimitiveFloat": _primitive("PrimitiveFloat", "FLOAT", {"min": -sys.maxsize, "max": sys.maxsize}),
    "PrimitiveBoolean": _primitive("PrimitiveBoolean", "BOOLEAN", {}),
}

NODE_CLASS_MAPPINGS = {c.__name__: c for c in (LoadImage, LoadImageMask, SaveImage, PreviewImage, ImageScale,
                                                ImageScaleBy)}
NODE_CLASS_MAPPINGS.update(_PRIMITIVES)
NODE_DISPLAY_NAME_MAPPINGS = {"LoadImage": "Load Image", "LoadImageMask": "Load Image (as Mask)",
                              "SaveImage": "Save Image", "PreviewImage": "Preview Image",
                              "ImageScale": "Upscale Image", "ImageScaleBy": "Upscale Image By",
                              "PrimitiveString": "String", "PrimitiveStringMultiline": "String (Multiline)",
                              "PrimitiveInt": "Int", "PrimitiveFloat": "Float", "PrimitiveBoolean": "Boolean"}
