"""Helpers of tests/test_comfy_graph_parity.py: a full-size random-weight SD 1.5 built in ComfyUI's
own model classes and written by ComfyUI's CheckpointSave path; ComfyUI's core graphs as API
JSON; running them in ComfyUI's own executor (execution.PromptExecutor, as its prompt worker
does) and in `lora-lab run`.

Only imported by tests that found a ComfyUI checkout (COMFYUI_DIR); `comfy` imports are local.
"""
from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import logging
import math
import os
import sys
from pathlib import Path

import torch

log = logging.getLogger(__name__)

POSITIVE, NEGATIVE = "a red fox in the snow", "blurry"
PICTURE = "parity_rgba.png"  # RGB random pixels; alpha 0 in the square 16:48 (LoadImage's mask 1 there)
KINDS = ("default", "lora", "img2img", "inpaint", "inpaint_vae", "hires")

# SD 1.5's UNet in ComfyUI's UNetModel arguments, as its model detection reads them off a real
# SD 1.5 file (supported_models.SD15 adds num_heads=8); the test checks ComfyUI detects exactly
# this from the file it wrote.
SD15_UNET = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
    "legacy": False, "adm_in_channels": None, "in_channels": 4, "model_channels": 320,
    "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "channel_mult": [1, 2, 4, 4],
    "transformer_depth_middle": 1, "use_linear_in_transformer": False, "context_dim": 768,
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], "use_temporal_attention": False,
    "use_temporal_resblock": False,
}
SD_VAE = {"ddconfig": {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                       "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0},
          "embed_dim": 4}


def import_comfy(root: str, fp32_text_enc: bool = True):
    """ComfyUI's modules from `root` in this process (CPU mode); raises ImportError & co."""
    if root not in sys.path:
        sys.path.insert(0, root)
    args = importlib.import_module("comfy.cli_args").args
    if "comfy.model_management" not in sys.modules:
        args.cpu = True
    # On a CPU ComfyUI keeps text-encoder weights in fp16 by default; a LoRA's patched CLIP
    # weights are then rounded (see the test's docstring). We compute in fp32, as it does with this.
    args.fp32_text_enc = fp32_text_enc
    for name in ("comfy.sd", "comfy.sample", "comfy.utils", "comfy.model_management", "comfy.supported_models",
                 "comfy.model_detection", "folder_paths", "nodes", "execution", "comfy_extras.nodes_model_merging"):
        importlib.import_module(name)
    return sys.modules


# ---------------------------------------------------------------------------------------------
# the checkpoint, built by ComfyUI

def seeded_fill(module: torch.nn.Module, seed: int) -> int:
    """Fill every parameter from one seeded generator, in module order: Linear/Conv weights and
    biases uniform in +-1/sqrt(fan_in) (PyTorch's default init), norms 1 +- 0.1 / +-0.1 (not 1 / 0,
    so a swapped norm key shows), embeddings N(0, 0.02), anything else +-0.1. ComfyUI's layers
    skip initialisation (comfy.ops.disable_weight_init), so nothing may be left out. Returns the
    number of values written."""
    g = torch.Generator().manual_seed(seed)
    done: set[int] = set()
    count = 0

    def fill(p, lo=None, hi=None, std=None):
        nonlocal count
        if p is None or id(p) in done:
            return
        t = torch.empty(p.shape, dtype=torch.float32)
        t = t.normal_(0.0, std, generator=g) if std is not None else t.uniform_(lo, hi, generator=g)
        p.data.copy_(t)
        done.add(id(p))
        count += t.numel()

    with torch.no_grad():
        for _, m in module.named_modules():
            w, b = getattr(m, "weight", None), getattr(m, "bias", None)
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)):
                bound = 1.0 / math.sqrt(w[0].numel())
                fill(w, -bound, bound)
                fill(b, -bound, bound)
            elif isinstance(m, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
                fill(w, 0.9, 1.1)
                fill(b, -0.1, 0.1)
            elif isinstance(m, torch.nn.Embedding):
                fill(w, std=0.02)
        for _, p in module.named_parameters():
            fill(p, -0.1, 0.1)
    return count


@contextlib.contextmanager
def _quiet_root_logger():
    """ComfyUI warns with the full key list of a VAE built without a state dict."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def comfy_sd15_checkpoint(out_dir: Path, prefix: str, seed: int = 1234) -> Path:
    """A random SD 1.5 in ComfyUI's classes (supported_models.SD15 -> BaseModel, SD1ClipModel,
    AutoencoderKL), fp16, written by CheckpointSave's save_checkpoint; returns the file."""
    mods = sys.modules
    sd_mod, supported = mods["comfy.sd"], mods["comfy.supported_models"]
    mm, patcher_mod = mods["comfy.model_management"], importlib.import_module("comfy.model_patcher")
    merging = mods["comfy_extras.nodes_model_merging"]
    config = supported.SD15(dict(SD15_UNET))
    config.set_inference_dtype(torch.float16, None)
    base = config.get_model({})
    n = seeded_fill(base.diffusion_model, seed)
    model = patcher_mod.ModelPatcher(base, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())
    clip = sd_mod.CLIP(config.clip_target(), model_options={"dtype": torch.float16})
    n += seeded_fill(clip.cond_stage_model, seed + 1)
    with _quiet_root_logger():
        vae = sd_mod.VAE(sd={}, config={"params": SD_VAE}, dtype=torch.float16)
    n += seeded_fill(vae.first_stage_model, seed + 2)
    log.info("ComfyUI SD 1.5: %d random values", n)
    merging.save_checkpoint(model, clip=clip, vae=vae, filename_prefix=prefix, output_dir=str(out_dir))
    del model, base, clip, vae
    mm.unload_all_models()
    gc.collect()
    files = sorted(out_dir.glob(f"{prefix}_*_.safetensors"))
    assert len(files) == 1, files
    return files[0]


def kohya_lora_from_file(ckpt: Path, rank: int = 4, seed: int = 2) -> dict:
    """A kohya LoRA (LDM names) on the checkpoint's attention q/k/v/out and the text encoder's
    q_proj / fc1, read off the file's keys and shapes (no model needed)."""
    from safetensors import safe_open

    g = torch.Generator().manual_seed(seed)
    sd = {}
    with safe_open(str(ckpt), "pt") as f:
        for key in sorted(f.keys()):
            if key.startswith("model.diffusion_model.") and key.endswith(
                    (".attn1.to_q.weight", ".attn2.to_k.weight", ".attn2.to_v.weight", ".attn1.to_out.0.weight")):
                base = "lora_unet_" + key[len("model.diffusion_model."):-len(".weight")].replace(".", "_")
                alpha = 2.0
            elif key.startswith("cond_stage_model.transformer.text_model.encoder.") and key.endswith(
                    (".self_attn.q_proj.weight", ".mlp.fc1.weight")):
                base = "lora_te_" + key[len("cond_stage_model.transformer."):-len(".weight")].replace(".", "_")
                alpha = 4.0
            else:
                continue
            out_f, in_f = f.get_slice(key).get_shape()[:2]
            sd[base + ".lora_down.weight"] = torch.randn(rank, in_f, generator=g) / math.sqrt(in_f)
            sd[base + ".lora_up.weight"] = torch.randn(out_f, rank, generator=g) * 0.5
            sd[base + ".alpha"] = torch.tensor(alpha)
    return sd


def write_picture(path: Path) -> None:
    import numpy as np
    from PIL import Image

    g = torch.Generator().manual_seed(5)
    rgba = (torch.rand((64, 64, 4), generator=g) * 255).round().to(torch.uint8).numpy()
    rgba[:, :, 3] = 255
    rgba[16:48, 16:48, 3] = 0
    Image.fromarray(np.ascontiguousarray(rgba), "RGBA").save(path)


# ---------------------------------------------------------------------------------------------
# the graphs (ComfyUI API format; node ids as in ComfyUI's default graph)

def api_graph(kind: str, ckpt: str, lora: str) -> dict:
    g = {"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}}}
    model, clip, vae = ["4", 0], ["4", 1], ["4", 2]
    if kind == "lora":
        g["10"] = {"class_type": "LoraLoader", "inputs": {"lora_name": lora, "strength_model": 0.8,
                                                           "strength_clip": 1.0, "model": model, "clip": clip}}
        model, clip = ["10", 0], ["10", 1]
    g["6"] = {"class_type": "CLIPTextEncode", "inputs": {"text": POSITIVE, "clip": clip}}
    g["7"] = {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": clip}}
    g["5"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}

    def ksampler(seed, steps, sampler, scheduler, latent, denoise):
        return {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": steps, "cfg": 7.0, "sampler_name": sampler, "scheduler": scheduler,
            "denoise": denoise, "model": model, "positive": ["6", 0], "negative": ["7", 0], "latent_image": latent}}

    if kind in ("img2img", "inpaint", "inpaint_vae"):
        g["11"] = {"class_type": "LoadImage", "inputs": {"image": PICTURE}}
    if kind in ("default", "lora", "hires"):
        g["3"] = ksampler(7, 2, "euler", "normal", ["5", 0], 1.0)
    elif kind == "img2img":
        g["12"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["11", 0], "vae": vae}}
        g["3"] = ksampler(7, 3, "dpmpp_2m", "karras", ["12", 0], 0.6)
    elif kind == "inpaint":
        g["12"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["11", 0], "vae": vae}}
        g["13"] = {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["12", 0], "mask": ["11", 1]}}
        g["3"] = ksampler(7, 2, "euler", "normal", ["13", 0], 1.0)
    elif kind == "inpaint_vae":
        g["12"] = {"class_type": "VAEEncodeForInpaint", "inputs": {"pixels": ["11", 0], "vae": vae, "mask": ["11", 1],
                                                                    "grow_mask_by": 6}}
        g["3"] = ksampler(7, 2, "euler", "normal", ["12", 0], 1.0)
    else:
        raise ValueError(kind)
    last = "3"
    if kind == "hires":
        g["14"] = {"class_type": "LatentUpscale", "inputs": {"samples": ["3", 0], "upscale_method": "nearest-exact",
                                                             "width": 128, "height": 128, "crop": "disabled"}}
        g["15"] = ksampler(8, 2, "euler", "simple", ["14", 0], 0.5)
        last = "15"
    g["8"] = {"class_type": "VAEDecode", "inputs": {"samples": [last, 0], "vae": vae}}
    g["9"] = {"class_type": "SaveImage", "inputs": {"filename_prefix": kind, "images": ["8", 0]}}
    g["20"] = {"class_type": "SaveLatent", "inputs": {"filename_prefix": f"latents/{kind}", "samples": [last, 0]}}
    return g


# ---------------------------------------------------------------------------------------------
# running them

class _NoServer:
    """What ComfyUI's executor asks of its server when no client listens."""

    client_id = None
    last_node_id = None
    last_prompt_id = None
    sockets_metadata: dict = {}  # noqa: RUF012 (read only)

    def send_sync(self, event, data, sid=None):
        pass

    def queue_updated(self):
        pass


def point_comfy_at(models: Path, input_dir: Path, output_dir: Path) -> None:
    fp = sys.modules["folder_paths"]
    fp.add_model_folder_path("checkpoints", str(models / "checkpoints"), is_default=True)
    fp.add_model_folder_path("loras", str(models / "loras"), is_default=True)
    fp.set_input_directory(str(input_dir))
    fp.set_output_directory(str(output_dir))


def run_in_comfyui(graphs: dict[str, dict]) -> None:
    """Validate and execute each API graph as ComfyUI's prompt worker does (one executor, its
    classic cache: the checkpoint loads once). Raises with ComfyUI's error when one fails."""
    execution, mm = sys.modules["execution"], sys.modules["comfy.model_management"]
    executor = execution.PromptExecutor(_NoServer(), cache_type=execution.CacheType.CLASSIC)
    try:
        for name, prompt in graphs.items():
            valid = asyncio.run(execution.validate_prompt(name, prompt, None))
            if not valid[0]:
                raise AssertionError(f"ComfyUI refused {name}: {valid[1]} {valid[3]}")
            executor.execute(prompt, name, {}, valid[2])
            if not executor.success:
                errors = [m for m in executor.status_messages if m[0] == "execution_error"]
                raise AssertionError(f"ComfyUI failed {name}: {errors}")
    finally:
        executor.reset()
        del executor
        mm.unload_all_models()
        gc.collect()


class SaveLatentForTest:
    """The runner has no SaveLatent (ComfyUI's writes <output>/<prefix>_00001_.latent, a
    safetensors file with latent_tensor); this test-only output node writes the same tensor to
    <output>/<prefix>.latent, so `lora-lab run` hands the graph's latent back."""

    CATEGORY = "test"
    FUNCTION = "save"
    OUTPUT_NODE = True
    RETURN_TYPES = ()

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",), "filename_prefix": ("STRING", {"default": "latents/x"})}}

    def save(self, samples, filename_prefix):
        from lora_lab.nodes.io.paths import output_dir
        from safetensors.torch import save_file

        path = output_dir() / f"{filename_prefix}.latent"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({"latent_tensor": samples["samples"].contiguous(), "latent_format_version_0": torch.tensor([])}, tmp)
        os.replace(tmp, path)
        return {"ui": {"latents": [{"filename": path.name, "subfolder": path.parent.name, "type": "output"}]}}


def run_in_lora_lab(graph_files: list[Path], models: Path, input_dir: Path, output_dir: Path) -> dict:
    """`lora-lab run GRAPH... --json` in this process (the CLI's own entry point and executor,
    on the runner's registry plus SaveLatentForTest); returns the JSON summary."""
    import io
    import json

    from lora_lab.nodes.cli.main import main
    from lora_lab.nodes.defs.runner_registry import RUNNER_CLASS_MAPPINGS

    registry = {**RUNNER_CLASS_MAPPINGS, "SaveLatent": SaveLatentForTest}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["run", *map(str, graph_files), "--models-dir", str(models), "--input-dir", str(input_dir),
                     "--output-dir", str(output_dir), "--quiet", "--json"], registry=registry)
    summary = json.loads(out.getvalue())
    assert code == 0, summary
    return summary


def read_latent(path: Path) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(str(path))["latent_tensor"].float()
