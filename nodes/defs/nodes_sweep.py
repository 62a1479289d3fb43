"""Node definitions for the sweep area (registered by node_defs.py)."""
from __future__ import annotations

# Same values as node_defs.py (not imported from it: node_defs imports this module while it loads).
MODEL = "LORA_LAB_MODEL"
CATEGORY = "LoRA Lab"
MAX_SEED = 0xFFFFFFFFFFFFFFFF


def _lora_names() -> list[str]:
    from ..demo.demo_lora import with_demo_names
    from ..io.paths import LORA_EXTENSIONS, list_names

    return with_demo_names(list_names("loras", LORA_EXTENSIONS))


class LoraLabStrengthSweep:
    """Strength sweep: one LoRA at several strengths (× another LoRA's strengths, or × seeds),
    as one labelled contact sheet. LoRAs applied upstream stay applied and untouched."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("contact_sheet",)
    FUNCTION = "sweep"
    DESCRIPTION = ("Samples the model with a LoRA at each strength (UNet and text alike) and lays the images "
                   "out as one labelled grid; an optional second axis sweeps another LoRA or seeds.")

    @classmethod
    def INPUT_TYPES(cls):
        from ..sampling.sampler_names import SAMPLER_NAMES, SCHEDULER_NAMES
        from ..sampling.sweep import AXIS2_CHOICES, NO_LORA

        names = _lora_names()
        return {
            "required": {
                "model": (MODEL,),
                "lora_name": (names, {"tooltip": "the LoRA to sweep (added on top of the model's LoRAs)"}),
                "strengths": ("STRING", {"default": "0, 0.25, 0.5, 0.75, 1",
                                         "tooltip": "columns: numbers, or ranges start:stop:step"}),
                "prompt": ("STRING", {"multiline": True, "default": ""}),
                "negative_prompt": ("STRING", {"multiline": True, "default": ""}),
                "seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True}),
                "steps": ("INT", {"default": 20, "min": 1, "max": 10000}),
                "cfg": ("FLOAT", {"default": 7.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}),
                "sampler_name": (list(SAMPLER_NAMES),),
                "scheduler": (list(SCHEDULER_NAMES),),
                "width": ("INT", {"default": 512, "min": 64, "max": 16384, "step": 8}),
                "height": ("INT", {"default": 512, "min": 64, "max": 16384, "step": 8}),
            },
            "optional": {
                "axis2": (list(AXIS2_CHOICES), {"default": "none", "tooltip": "rows: none, another LoRA, or seeds"}),
                "lora2_name": ([NO_LORA, *names], {"default": NO_LORA}),
                "values2": ("STRING", {"default": "", "tooltip": "rows: lora2 strengths or seeds"}),
            },
        }

    def sweep(self, model, lora_name, strengths, prompt, negative_prompt, seed, steps, cfg, sampler_name,
              scheduler, width, height, axis2="none", lora2_name="none", values2=""):
        from ..demo.demo_lora import ensure_if_demo
        from ..io.progress import Progress
        from ..sampling.sweep import make_plan, run_sweep
        from ..sampling.txt2img import SampleSettings

        plan = make_plan(lora_name, strengths, axis2, lora2_name, values2)
        for name in (plan.lora, plan.lora2):
            if name:
                ensure_if_demo(name)
        settings = SampleSettings(prompt, negative_prompt, seed, steps, cfg, sampler_name, scheduler, width, height)
        cells = len(plan.strengths) * len(plan.values2)
        with Progress(cells * steps, desc="sweep") as bar:
            return (run_sweep(model, plan, settings, progress=bar),)


NODE_CLASS_MAPPINGS: dict = {"LoraLabStrengthSweep": LoraLabStrengthSweep}
NODE_DISPLAY_NAME_MAPPINGS: dict = {"LoraLabStrengthSweep": "Strength Sweep (LoRA Lab)"}
