"""Helpers of bench/sample.py: a child process's memory probe, the full-size random SD 1.5
checkpoint ComfyUI can detect, and the ComfyUI KSampler side.

Each side of the benchmark runs in its own fresh process (bench/sample.py --side NAME), so
its peak resident set is its own: Memory.loaded() is called right after imports + model
load (it records that RSS and the load's own peak, then resets the kernel's high-water mark
through /proc/self/clear_refs), Memory.report() after sampling gives the sampling peak.
"""
from __future__ import annotations

import gc
import os
import sys


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


class Memory:
    """Peak RSS of this process (VmHWM), its RSS after load, and the CUDA allocator's peak."""

    def __init__(self, device):
        self.device = device
        self.loaded_rss = self.load_peak = 0
        self.reset = False

    def loaded(self):
        import torch

        self.loaded_rss = _status_kb("VmRSS") * 1024
        # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over an exec from the forked
        # parent (measured: every side reported the parent's 6.9 GB from writing the checkpoint)
        self.load_peak = _status_kb("VmHWM") * 1024
        try:  # "5": reset the peak RSS to the current RSS (Linux >= 4.0)
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.reset = True
        except OSError:
            self.reset = False
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._cuda_base = torch.cuda.memory_allocated()

    def report(self) -> dict:
        import torch

        peak = _status_kb("VmHWM") * 1024
        out = {"rss_loaded": self.loaded_rss, "rss_load_peak": self.load_peak, "rss_peak": peak,
               "rss_increment": peak - self.loaded_rss, "hwm_reset": self.reset}
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            out["cuda_peak"] = torch.cuda.max_memory_allocated()
            out["cuda_increment"] = out["cuda_peak"] - self._cuda_base
        return out


def write_full_size_sd15(path) -> None:
    """A seeded random-weight SD 1.5 (full size: UNet 320 channels, CLIP ViT-L text encoder,
    the 4-level VAE) in the single-file layout, fp16: the layout ComfyUI's model detection
    recognises (tests/test_comfy_graph_parity.py writes its checkpoint with this too)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from lora_lab.nodes.model.checkpoint import tokenizers_for
    from lora_lab.nodes.model.checkpoint_save import save_single_file
    from lora_lab.nodes.model.handle import ModelHandle
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(1234)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4)
    clip = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                        num_attention_heads=12, projection_dim=768, hidden_act="quick_gelu"))
    h = ModelHandle("sd1", "epsilon", unet, vae, (clip,), tokenizers_for("sd1"))
    tmp = f"{path}.tmp"
    save_single_file(tmp, h, dtype=torch.float16)
    os.replace(tmp, path)
    del h, unet, vae, clip
    gc.collect()


def comfy_importable(root: str | None) -> str | None:
    """Why ComfyUI at `root` can't be used in this interpreter, or None if it can."""
    if not root:
        return "COMFYUI_DIR is not set"
    if not os.path.isfile(os.path.join(root, "nodes.py")):
        return f"COMFYUI_DIR={root} is not a ComfyUI checkout (no nodes.py)"
    import subprocess

    probe = ("import sys; sys.path.insert(0, sys.argv[1]); import comfy.cli_args as c; c.args.cpu = True; "
             "import comfy.sd, comfy.sample, nodes")  # in a child: a failed import leaves nothing behind here
    try:
        r = subprocess.run([sys.executable, "-c", probe, root], capture_output=True, text=True, timeout=300,
                           check=False)
    except subprocess.TimeoutExpired:
        return f"importing ComfyUI from {root} in {sys.executable} took over 300 s"
    if r.returncode:
        last = (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1]
        return f"ComfyUI at {root} does not import in {sys.executable}: {last}"
    return None


def _comfy_import(root: str, device):
    if root not in sys.path:
        sys.path.insert(0, root)
    import importlib

    args = importlib.import_module("comfy.cli_args").args
    args.cpu = device.type == "cpu"
    args.fp32_text_enc = True  # fp32 weights on a CPU, as ours (see tests/test_comfy_graph_parity.py)
    importlib.import_module("comfy.model_management")
    return importlib.import_module("comfy.sd"), importlib.import_module("nodes")


def comfy_side(a, path, device, timed):
    """ComfyUI's KSampler (nodes.common_ksampler, as its KSampler node calls it) on the
    checkpoint at `path`: CLIPTextEncode, EmptyLatentImage, common_ksampler, VAEDecode.
    `timed(run)` times run(steps); returns (per-step seconds, Memory report)."""
    import torch

    comfy_sd, comfy_nodes = _comfy_import(os.environ["COMFYUI_DIR"], device)
    import comfy.utils

    comfy.utils.PROGRESS_BAR_ENABLED = False
    model, clip, vae = comfy_sd.load_checkpoint_guess_config(str(path), output_vae=True, output_clip=True)[:3]
    mem = Memory(device)
    mem.loaded()

    def run(steps):
        pos = comfy_nodes.CLIPTextEncode().encode(clip, a.prompt)[0]
        neg = comfy_nodes.CLIPTextEncode().encode(clip, a.negative)[0]
        lat = comfy_nodes.EmptyLatentImage().generate(a.size, a.size, a.batch)[0]
        out = comfy_nodes.common_ksampler(model, 1, steps, a.cfg, "euler", "normal", pos, neg, lat)[0]
        return comfy_nodes.VAEDecode().decode(vae, out)[0]

    with torch.inference_mode():
        per_step = timed(run)
    return per_step, mem.report()
