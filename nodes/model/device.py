"""Device and dtype choice: ComfyUI's device inside ComfyUI, else CUDA when present, else CPU."""
from __future__ import annotations

import sys

import torch


def default_device() -> torch.device:
    mm = sys.modules.get("comfy.model_management")
    if mm is not None:
        return mm.get_torch_device()
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device) -> torch.dtype:
    """fp16 on GPUs (bf16 where supported), fp32 on the CPU (fp16 matmuls are slow or missing there)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32
