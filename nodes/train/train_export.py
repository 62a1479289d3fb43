"""Writing a trained LoRA as kohya's sd-scripts do: keys, ss_* metadata, modelspec, sshs hashes.

Keys: <name>.lora_down.weight, <name>.lora_up.weight and <name>.alpha (float32 scalar), with
the names of train_lora_modules. Metadata: the ss_* keys train_network.py writes (values
stringified as kohya does), modelspec.* for a LoRA, and sshs_model_hash / sshs_legacy_hash
computed as kohya's precalculate_safetensors_hashes: the file serialised with its ss_*
metadata only; model hash = sha256 of everything after the header, legacy hash = first 8 hex
digits of the sha256 of the 64 KiB at offset 1 MiB.

`write_lora` is the one exporting function (to be swapped for the shared LoRA saver).
"""
from __future__ import annotations

import datetime
import hashlib
import json
import math
import time
from pathlib import Path

import torch

SAVE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
ARCHITECTURES = {("sd1", "epsilon"): "stable-diffusion-v1", ("sd1", "v_prediction"): "stable-diffusion-v1",
                 ("sd2", "epsilon"): "stable-diffusion-v2-512", ("sd2", "v_prediction"): "stable-diffusion-v2-768-v",
                 ("sdxl", "epsilon"): "stable-diffusion-xl-v1-base", ("sdxl", "v_prediction"): "stable-diffusion-xl-v1-base"}
IMPL_SGM = "https://github.com/Stability-AI/generative-models"


def base_model_version(family: str, prediction_type: str) -> str:
    """kohya's ss_base_model_version: sd_v1, sd_v2, sd_v2_v (v-prediction 2.x), sdxl_base_v1-0."""
    if family == "sdxl":
        return "sdxl_base_v1-0"
    return {"sd1": "sd_v1", "sd2": "sd_v2"}[family] + ("_v" if prediction_type == "v_prediction" else "")


def legacy_file_hash(path) -> str:
    """A1111's old model hash (kohya's model_hash): sha256 of the 64 KiB at 1 MiB, 8 hex digits."""
    try:
        with open(path, "rb") as f:
            f.seek(0x100000)
            return hashlib.sha256(f.read(0x10000)).hexdigest()[:8]
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        return "NOFILE"


def bucket_info(dataset) -> dict:
    counts: dict = {}
    err = 0.0
    for item in dataset.items:
        n = dataset.repeats(item)
        counts[item.bucket] = counts.get(item.bucket, 0) + n
        err += abs(item.size[0] / item.size[1] - item.bucket[0] / item.bucket[1])
    buckets = {i: {"resolution": list(b), "count": counts[b]} for i, b in enumerate(sorted(counts))}
    return {"buckets": buckets, "mean_img_ar_error": err / max(1, len(dataset.items))}


def training_metadata(cfg, handle, dataset, run: dict) -> dict:
    """The ss_* keys of kohya's train_network.py for this run. `run` carries the facts only the
    loop knows: session_id, started_at, batches_per_epoch, num_epochs, total_batch_size,
    network (the LoraNetwork), optimizer (its repr)."""
    from .train_data import bucket_settings

    step, low, high = bucket_settings(cfg.resolution)
    conv = cfg.target == "attention+ff+conv"
    source = Path(handle.source) if handle.source else None
    meta = {
        "ss_session_id": run["session_id"], "ss_training_started_at": run["started_at"],
        "ss_output_name": Path(cfg.output_name).name, "ss_learning_rate": cfg.learning_rate,
        "ss_text_encoder_lr": cfg.text_encoder_lr, "ss_unet_lr": cfg.learning_rate,
        "ss_num_train_images": dataset.num_train_images, "ss_num_reg_images": 0,
        "ss_num_batches_per_epoch": run["batches_per_epoch"], "ss_num_epochs": run["num_epochs"],
        "ss_gradient_checkpointing": cfg.gradient_checkpointing,
        "ss_gradient_accumulation_steps": cfg.gradient_accumulation, "ss_max_train_steps": cfg.steps,
        "ss_lr_warmup_steps": cfg.lr_warmup_steps, "ss_lr_scheduler": cfg.lr_scheduler,
        "ss_network_module": "networks.lora", "ss_network_dim": cfg.rank, "ss_network_alpha": cfg.alpha,
        "ss_network_dropout": None, "ss_mixed_precision": cfg.mixed_precision, "ss_full_fp16": False,
        "ss_v2": handle.family == "sd2", "ss_base_model_version": base_model_version(handle.family, handle.prediction_type),
        "ss_clip_skip": cfg.clip_skip or None, "ss_max_token_length": None, "ss_cache_latents": True,
        "ss_seed": cfg.seed, "ss_lowram": False, "ss_noise_offset": cfg.noise_offset or None,
        "ss_multires_noise_iterations": None, "ss_multires_noise_discount": 0.3, "ss_adaptive_noise_scale": None,
        "ss_zero_terminal_snr": False, "ss_training_comment": cfg.training_comment or None,
        "ss_optimizer": run["optimizer"], "ss_max_grad_norm": cfg.max_grad_norm,
        "ss_caption_dropout_rate": cfg.caption_dropout, "ss_caption_dropout_every_n_epochs": 0,
        "ss_caption_tag_dropout_rate": 0.0, "ss_face_crop_aug_range": None, "ss_prior_loss_weight": 1.0,
        "ss_min_snr_gamma": cfg.min_snr_gamma or None, "ss_scale_weight_norms": None, "ss_ip_noise_gamma": None,
        "ss_debiased_estimation": False, "ss_loss_type": "l2",
        "ss_batch_size_per_device": cfg.batch_size, "ss_total_batch_size": run["total_batch_size"],
        "ss_resolution": (cfg.resolution, cfg.resolution), "ss_color_aug": False, "ss_flip_aug": False,
        "ss_random_crop": False, "ss_shuffle_caption": cfg.shuffle_caption, "ss_enable_bucket": cfg.enable_bucket,
        "ss_bucket_no_upscale": False, "ss_min_bucket_reso": low, "ss_max_bucket_reso": high,
        "ss_keep_tokens": cfg.keep_tokens,
        "ss_dataset_dirs": json.dumps({s.name: {"n_repeats": s.repeats, "img_count": s.img_count}
                                       for s in dataset.subsets}),
        "ss_reg_dataset_dirs": json.dumps({}), "ss_tag_frequency": json.dumps(dataset.tag_frequency),
        "ss_bucket_info": json.dumps(bucket_info(dataset)),
    }
    if conv:
        meta["ss_network_args"] = json.dumps({"conv_dim": str(cfg.effective_conv_rank),
                                              "conv_alpha": str(cfg.effective_conv_alpha)})
    if source is not None:
        meta["ss_sd_model_name"] = source.name
        if source.is_file():
            meta["ss_sd_model_hash"] = legacy_file_hash(source)
    return {k: str(v) for k, v in meta.items()}


def modelspec(cfg, handle, title: str) -> dict:
    arch = ARCHITECTURES[(handle.family, handle.prediction_type)]
    reso = cfg.resolution
    meta = {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": arch + "/lora",
        "modelspec.implementation": IMPL_SGM if handle.family == "sdxl" else "diffusers",
        "modelspec.title": title,
        "modelspec.resolution": f"{reso}x{reso}",
        "modelspec.date": datetime.datetime.now().replace(microsecond=0).isoformat(),
        "modelspec.prediction_type": "v" if handle.prediction_type == "v_prediction" else "epsilon",
    }
    if cfg.clip_skip:
        meta["modelspec.encoder_layer"] = str(cfg.clip_skip)
    return meta


def write_lora(path: Path, network, cfg, handle, dataset, run: dict, step: int, epoch: int,
               overwrite: bool = False) -> Path:
    """Write the network as a kohya LoRA file at `path` (atomically) with the full metadata."""
    from ..io.safetensors_write import atomic_write, write_safetensors
    from ..merge.lora_save import addnet_hashes

    sd = network.kohya_state_dict(SAVE_DTYPES[cfg.save_dtype])
    meta = training_metadata(cfg, handle, dataset, run)
    meta.update({"ss_training_finished_at": str(time.time()), "ss_steps": str(step), "ss_epoch": str(epoch)})
    meta.update(modelspec(cfg, handle, Path(path).stem))
    meta = {k: str(v) for k, v in meta.items()}
    meta["sshs_model_hash"], meta["sshs_legacy_hash"] = addnet_hashes(sd, meta)
    with atomic_write(path, overwrite=overwrite) as tmp:
        write_safetensors(sd, tmp, meta)
    return Path(path)


# ---------------------------------------------------------------------------- loss curve
def moving_average(vals: list[float]) -> tuple[int, list[float]]:
    """(window, trailing means): a window of n/20 steps, at least 10 (all of a short run),
    so the smoothed value is never just the last loss."""
    n = len(vals)
    k = min(n, max(10, n // 20))
    out, total = [], 0.0
    for i, v in enumerate(vals):
        total += v
        if i >= k:
            total -= vals[i - k]
        out.append(total / min(i + 1, k))
    return k, out


def loss_curve_image(losses: list[float], width: int = 512, height: int = 256) -> torch.Tensor:
    """IMAGE [1, H, W, 3] in 0..1: per-step loss (grey) and its moving average (blue), log-free axes."""
    import numpy as np
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (width, height), (255, 255, 255))
    d = ImageDraw.Draw(im)
    left, right, top, bottom = 48, width - 8, 8, height - 20
    d.rectangle([left, top, right, bottom], outline=(0, 0, 0))
    vals = [float(v) for v in losses if math.isfinite(float(v))]  # drop NaN/inf (a diverged step)
    if vals:
        lo, hi = min(vals), max(vals)
        span = (hi - lo) or 1.0
        n = len(vals)

        def pt(i, v):
            x = left + (right - left) * (i / max(1, n - 1))
            return x, bottom - (bottom - top) * ((v - lo) / span)

        k, avg = moving_average(vals)
        if n > 1:
            d.line([pt(i, v) for i, v in enumerate(vals)], fill=(170, 170, 170), width=1)
            d.line([pt(i, v) for i, v in enumerate(avg)], fill=(30, 90, 200), width=2)
        else:
            x, y = pt(0, vals[0])
            d.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(30, 90, 200))
        d.text((2, top), f"{hi:.4g}", fill=(0, 0, 0))
        d.text((2, bottom - 10), f"{lo:.4g}", fill=(0, 0, 0))
        d.text((left, bottom + 4), f"loss, {n} steps (last {vals[-1]:.4g}, mean of last {k} {avg[-1]:.4g})",
               fill=(0, 0, 0))
    else:
        d.text((left + 8, top + 8), "no loss recorded", fill=(0, 0, 0))
    arr = np.asarray(im, dtype=np.float32) / 255.0
    return torch.from_numpy(arr.copy())[None]
