"""Node definitions: thin declarative adapters over the core (DESIGN.md, layer 2).

Each class follows ComfyUI's custom-node interface. Core modules are imported inside the
execute methods, so importing the pack costs nothing.
"""
from __future__ import annotations

import logging

from .common import CATEGORY, MAX_SEED, MODEL, VAE
from .common import lora_names as _lora_names
from .common import with_run_label as _with_run_label

log = logging.getLogger(__name__)


def _register_caches():
    from .comfy_memory import register

    register()  # the LoRA cache under ComfyUI's model management (a no-op in the runner)


def _sampler_names():
    from ..sampling.sampler_names import SAMPLER_NAMES

    return list(SAMPLER_NAMES)


def _scheduler_names():
    from ..sampling.sampler_names import SCHEDULER_NAMES

    return list(SCHEDULER_NAMES)


class LoraLabCheckpointLoader:
    """Load Checkpoint: a single-file SD 1.x / 2.x / SDXL checkpoint or diffusers folder."""

    CATEGORY = CATEGORY
    RETURN_TYPES = (MODEL,)
    RETURN_NAMES = ("model",)
    FUNCTION = "load"
    DESCRIPTION = "Loads a checkpoint (.safetensors single file, or a diffusers folder) as a LoRA Lab model."

    @classmethod
    def INPUT_TYPES(cls):
        from ..demo.demo import DEMO_NAME
        from ..io.paths import CHECKPOINT_EXTENSIONS, list_names

        names = list_names("checkpoints", CHECKPOINT_EXTENSIONS)
        if DEMO_NAME not in names:
            names.append(DEMO_NAME)  # written on first use
        return {"required": {"ckpt_name": (names, {"tooltip": "file in the checkpoints folder"})}}

    def load(self, ckpt_name):
        from ..demo.demo import DEMO_NAME, ensure_demo_checkpoint
        from ..io.errors import LoraLabError, NodeInputError
        from ..io.paths import resolve
        from ..model.checkpoint import load_checkpoint

        from .comfy_memory import register

        try:
            if ckpt_name == DEMO_NAME:
                ensure_demo_checkpoint()
            handle = load_checkpoint(resolve("checkpoints", ckpt_name))
            register()  # inside ComfyUI its free-memory / unload requests now reach our caches
            return (handle,)
        except LoraLabError as e:
            raise NodeInputError("LoraLabCheckpointLoader", "ckpt_name", ckpt_name, str(e)) from None


class LoraLabSampler:
    """Sample: text to image with ComfyUI's KSampler samplers, schedules and seeding; from a latent or
    an image (img2img with denoise, a second hires pass), with a mask (inpainting)."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "LATENT")
    RETURN_NAMES = ("images", "latent")
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (MODEL,),
                "prompt": ("STRING", {"multiline": True, "default": ""}),
                "negative_prompt": ("STRING", {"multiline": True, "default": ""}),
                "seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True}),
                "steps": ("INT", {"default": 20, "min": 1, "max": 10000}),
                "cfg": ("FLOAT", {"default": 7.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}),
                "sampler_name": (_sampler_names(),),
                "scheduler": (_scheduler_names(),),
                "width": ("INT", {"default": 512, "min": 64, "max": 16384, "step": 8}),
                "height": ("INT", {"default": 512, "min": 64, "max": 16384, "step": 8}),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096}),
            },
            "optional": {
                "clip_skip": ("INT", {"default": 0, "min": 0, "max": 24,
                                      "tooltip": "0 = model default; 1 = last layer, 2 = penultimate (A1111 terms)"}),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                      "tooltip": "with a latent or image: how much of it is redrawn (1 = all)"}),
                "latent": ("LATENT", {"tooltip": "start from this latent (width/height/batch_size then unused)"}),
                "image": ("IMAGE", {"tooltip": "start from this image, encoded with the VAE (img2img)"}),
                "mask": ("MASK", {"tooltip": "inpainting: 1 = redraw, 0 = keep"}),
                "vae": (VAE, {"tooltip": "a VAE from Load VAE, used instead of the checkpoint's"}),
                "a1111_noise": ("LORA_LAB_A1111_NOISE", {"tooltip": "from A1111 Noise: draw the noise as A1111 "
                                                                    "does instead of as ComfyUI does"}),
            },
        }

    def sample(self, model, prompt, negative_prompt, seed, steps, cfg, sampler_name, scheduler, width, height,
               batch_size, clip_skip=0, denoise=1.0, latent=None, image=None, mask=None, vae=None, a1111_noise=None):
        from ..demo.demo_lora import ensure_named
        from ..io import notices
        from ..io.progress import Progress
        from ..lora.lora_stack import strip_prompt_loras
        from ..sampling.txt2img import SampleSettings

        ensure_named(e.name for e in strip_prompt_loras(prompt)[1])  # <lora:...> tags naming a demo LoRA

        s = SampleSettings(prompt, negative_prompt, seed, steps, cfg, sampler_name, scheduler, width, height,
                           batch_size, clip_skip, a1111_noise=a1111_noise)
        from .nodes_vae import decode_with, lean_memory, start_latent

        with lean_memory(model, vae) as tiles:  # LORA_LAB_VAE_TILE / LORA_LAB_ATTENTION_SLICE
            start = start_latent(model, latent, image, mask, vae, tiles)
            with Progress(steps, desc="sample") as bar, notices.collect() as notes:  # <lora:> tag partial matches
                if start is None and float(denoise) == 1.0:  # plain text to image
                    from ..sampling.txt2img import txt2img_latents

                    out = {"samples": txt2img_latents(model, s, progress=bar).float().cpu() / model.vae_scaling_factor}
                else:
                    from ..sampling.img2img import sample_latent

                    out = sample_latent(model, s, start, float(denoise), progress=bar)
            images = decode_with(model, vae, out["samples"], tiles)
        return notices.with_ui((images, out), notes)


class LoraLabSaveImage:
    """Save Image: PNGs with ComfyUI workflow chunks and A1111 parameters; never overwrites."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE",),
                "filename_prefix": ("STRING", {"default": "LoraLab"}),
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO", "unique_id": "UNIQUE_ID"},
        }

    def save(self, images, filename_prefix, prompt=None, extra_pnginfo=None, unique_id=None):
        from ..io.image_io import save_images
        from ..io.paths import output_dir
        from ..graph.a1111_write import parameters_for_batch

        paths = save_images(images, _with_run_label(filename_prefix), prompt, extra_pnginfo,
                            parameters_for_batch(prompt, unique_id, len(images)))
        root = output_dir()
        ui = []
        for p in paths:
            sub = p.parent.relative_to(root.resolve()).as_posix()
            ui.append({"filename": p.name, "subfolder": "" if sub == "." else sub, "type": "output"})
        return {"ui": {"images": ui}, "result": ()}


_STRENGTH = {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01}  # = io.checks' STRENGTH_MIN/MAX
_BLOCK_WEIGHTS = ("STRING", {"default": "", "tooltip": "optional per-block multipliers (A1111 LBW): a preset "
                             "such as ALL, INALL, MIDD, OUTALL or 17/26 (SDXL: 12/20) comma-separated numbers"})


class LoraLabLoraLoader:
    """Load LoRA: adds one LoRA (any supported format) to the model's stack."""

    CATEGORY = CATEGORY
    RETURN_TYPES = (MODEL, "STRING")
    RETURN_NAMES = ("model", "trigger_words")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (MODEL,),
                "lora_name": (_lora_names(),),
                "strength_unet": ("FLOAT", dict(_STRENGTH)),
                "strength_text": ("FLOAT", dict(_STRENGTH)),
            },
            "optional": {"block_weights": _BLOCK_WEIGHTS},
        }

    def load(self, model, lora_name, strength_unet, strength_text, block_weights=""):
        from ..demo.demo_lora import ensure_if_demo
        from ..io import notices
        from ..io.checks import check_strength
        from ..lora.lora_stack import StackEntry, add_loras

        node = "LoraLabLoraLoader"
        su = check_strength(strength_unet, node, "strength_unet")
        st = check_strength(strength_text, node, "strength_text")
        ensure_if_demo(lora_name)
        entry = StackEntry(lora_name, su, st)
        with notices.collect() as notes:  # a partial match is shown on the node, not only logged
            result = add_loras(model, [entry], node, "lora_name", block_weights)
        _register_caches()
        return notices.with_ui(result, notes)


class LoraLabLoraStack:
    """Stack LoRAs: one LoRA per line, `name[:unet[:text]]` or `<lora:name:w>`; `#` turns a line off."""

    CATEGORY = CATEGORY
    RETURN_TYPES = (MODEL, "LORA_STACK", "STRING")
    RETURN_NAMES = ("model", "lora_stack", "trigger_words")
    FUNCTION = "stack"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (MODEL,),
                "loras": ("STRING", {"multiline": True, "default": "",
                                     "tooltip": "one per line: name[:unet_strength[:text_strength]]"}),
            },
            "optional": {"lora_stack": ("LORA_STACK",), "block_weights": _BLOCK_WEIGHTS},
        }

    def stack(self, model, loras, lora_stack=None, block_weights=""):
        from ..demo.demo_lora import ensure_named
        from ..io import notices
        from ..lora.lora_stack import add_loras, parse_lora_stack, parse_stack_text

        entries = parse_lora_stack(lora_stack, "LoraLabLoraStack") + parse_stack_text(loras)
        ensure_named(e.name for e in entries)
        with notices.collect() as notes:
            new, words = add_loras(model, entries, "LoraLabLoraStack", "loras", block_weights)
        _register_caches()
        out_stack = [(e.name, e.strength_unet, e.strength_text) for e in entries]
        return notices.with_ui((new, out_stack, words), notes)


NODE_CLASS_MAPPINGS = {
    "LoraLabCheckpointLoader": LoraLabCheckpointLoader,
    "LoraLabSampler": LoraLabSampler,
    "LoraLabSaveImage": LoraLabSaveImage,
    "LoraLabLoraLoader": LoraLabLoraLoader,
    "LoraLabLoraStack": LoraLabLoraStack,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "LoraLabCheckpointLoader": "Load Checkpoint (LoRA Lab)",
    "LoraLabSampler": "Sample (LoRA Lab)",
    "LoraLabSaveImage": "Save Image (LoRA Lab)",
    "LoraLabLoraLoader": "Load LoRA (LoRA Lab)",
    "LoraLabLoraStack": "Stack LoRAs (LoRA Lab)",
}

# Nodes of the other areas live in their own modules (each as thin as these).
from . import nodes_a1111, nodes_merge, nodes_sweep, nodes_train, nodes_vae

for _area in (nodes_merge, nodes_train, nodes_sweep, nodes_vae, nodes_a1111):
    NODE_CLASS_MAPPINGS.update(_area.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_area.NODE_DISPLAY_NAME_MAPPINGS)
