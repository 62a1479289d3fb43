"""The training loop: dataset -> cached latents (and captions) -> LoRA hooks on the frozen
UNet (and text encoders) -> noise-prediction loss -> kohya-format file -> a handle using it.

One micro-step m draws its batch (train_data.BatchOrder), caption dropout / shuffle, noise,
noise offset and timesteps from (seed, m) alone, so a run resumed from a state at step s
continues exactly as the uninterrupted run would have. Losses per sample are the mean
squared error against the model's target (eps, or v = sqrt(a)*eps - sqrt(1-a)*x0), weighted
by min(snr, gamma)/snr (eps) or min(snr, gamma)/(snr + 1) (v) when min-SNR is on.

Runs with grad even under ComfyUI's torch.inference_mode. The shared base modules are never
changed: the LoRA acts through hooks that are removed at the end, the gradient-checkpointing
flags and train/eval modes are restored, and inference tensors are swapped for bit-identical
normal ones (train_lora_modules.make_autograd_ready). An interrupt (ComfyUI's Cancel,
Ctrl-C) saves the state at the last finished step, then stops.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..io.errors import InterruptedByUser, NodeInputError
from .train_config import NODE, TrainConfig, lr_factor

log = logging.getLogger(__name__)

STATE_FOLDER = "lora_lab_train"


@dataclass(frozen=True)
class TrainResult:
    handle: object  # the input handle + the trained LoRA (strength 1)
    lora_name: str  # file name inside the loras folder
    path: Path
    losses: tuple
    step: int
    state_dir: Path


def lora_path(cfg: TrainConfig, step: int | None = None) -> tuple[str, Path]:
    from ..io.errors import ModelPathError
    from ..io.paths import resolve

    name = cfg.output_name + (f"-step{step:08d}" if step is not None else "") + ".safetensors"
    try:
        return name, resolve("loras", name, must_exist=False)
    except ModelPathError as e:  # a name that leaves the folder
        raise NodeInputError(NODE, "output_name", cfg.output_name, str(e)) from None


def state_dir(cfg: TrainConfig) -> Path:
    from ..io.paths import output_dir

    return output_dir() / STATE_FOLDER / f"{cfg.output_name}-state"


def resume_dir(cfg: TrainConfig) -> Path | None:
    from ..io.paths import output_dir

    if not cfg.resume.strip():
        return None
    if cfg.resume.strip() == "last":
        p = state_dir(cfg)
    else:
        p = Path(cfg.resume).expanduser()
        p = p if p.is_absolute() else output_dir() / p
    if not (p / "train_state.json").is_file():
        raise NodeInputError(NODE, "resume", cfg.resume, f"no training state at {p}")
    return p


def _seed(*parts) -> int:
    return int(hashlib.sha256("-".join(map(str, parts)).encode()).hexdigest()[:15], 16)


def alphas_cumprod() -> torch.Tensor:
    """SD's scaled-linear schedule (1000 steps), computed in float64: [1000] float32."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, 0).float()


@contextlib.contextmanager
def _training_modes(handle, cfg: TrainConfig):
    """Gradient checkpointing / train mode for this run; every flag put back afterwards."""
    unet, tes = handle.unet, (handle.text_encoders if cfg.train_text_encoder else ())
    was_ckpt = unet.is_gradient_checkpointing
    te_state = [(m, m.training, _te_ckpt(m), hasattr(m, "_require_grads_hook")) for m in tes]
    # Base weights stay frozen (loaders freeze them already; a handle built by hand may not).
    thawed = [p for m in (unet, *handle.text_encoders) for p in m.parameters() if p.requires_grad]
    try:
        for p in thawed:
            p.requires_grad_(False)
        if cfg.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
            for m in tes:
                m.train()  # transformers checkpoints only in train mode (CLIP has no dropout by default)
                if hasattr(m, "activation_checkpointing_enable"):  # transformers >= 5
                    m.activation_checkpointing_enable({"use_reentrant": False})
                else:
                    m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        yield
    finally:
        if not was_ckpt and unet.is_gradient_checkpointing:
            unet.disable_gradient_checkpointing()
        for m, training, ckpt, had_hook in te_state:
            if not ckpt and _te_ckpt(m):
                (getattr(m, "activation_checkpointing_disable", None) or m.gradient_checkpointing_disable)()
            if not had_hook and hasattr(m, "_require_grads_hook"):
                m.disable_input_require_grads()  # enabling checkpointing added it; disabling does not remove it
            m.train(training)
        for p in thawed:
            p.requires_grad_(True)


def _te_ckpt(model) -> bool:
    return bool(getattr(model, "is_activation_checkpointing", None) if hasattr(type(model), "is_activation_checkpointing")
                else getattr(model, "is_gradient_checkpointing", False))


def _is_interrupt(e: BaseException) -> bool:
    return isinstance(e, (KeyboardInterrupt, InterruptedByUser)) or type(e).__name__ == "InterruptProcessingException"


def runtime_precision(mixed_precision: str, unet) -> str:
    """The runtime's mixed precision: "no" on a CUDA model held in fp16 (GPUs without bf16)
    becomes "fp16", i.e. autocast plus a loss scaler, as kohya's full_fp16 needs: without
    scaling, gradients through an fp16 UNet underflow."""
    p = next(unet.parameters())
    if mixed_precision == "no" and p.device.type == "cuda" and p.dtype == torch.float16:
        log.warning("%s: the model is held in fp16; training with fp16 autocast and a loss scaler", NODE)
        return "fp16"
    return mixed_precision


def train_lora(handle, cfg: TrainConfig, progress=None) -> TrainResult:
    """Train, write `<output_name>.safetensors` into the loras folder, return the result.

    progress: an object with update(n) (progress.Progress); its interrupt check stops the run.
    """
    from .train_data import scan_dataset

    name, final_path = lora_path(cfg)
    resume = resume_dir(cfg)
    if not cfg.overwrite:
        if final_path.exists():
            raise NodeInputError(NODE, "output_name", cfg.output_name,
                                 f"{final_path} exists; pick another name or set overwrite")
        if resume is None and state_dir(cfg).exists():
            raise NodeInputError(NODE, "output_name", cfg.output_name,
                                 f"a training state for this name exists ({state_dir(cfg)}): resume it "
                                 "(resume = last), or set overwrite to start again")
    dataset = scan_dataset(cfg.dataset_dir, cfg.resolution, cfg.enable_bucket)
    with torch.inference_mode(False), torch.enable_grad():
        return _train(handle, cfg, dataset, name, final_path, resume, progress)


def _train(handle, cfg, dataset, name, final_path, resume, progress) -> TrainResult:
    from ..io.progress import check_interrupt
    from ..lora.lora_stack import StackEntry, add_loras
    from ..lora.patcher import activate
    from .train_data import BatchOrder, cache_latents, process_caption
    from .train_export import write_lora
    from .train_lora_modules import LoraNetwork, make_autograd_ready
    from .train_runtime import load_state, make_optimizer, make_runtime, save_state
    from .train_text import TextCache, encode_captions

    activate(handle)  # the shared modules hold base + the handle's own LoRAs: training builds on them
    make_autograd_ready(handle.unet, *(handle.text_encoders if cfg.train_text_encoder else ()))
    rt = make_runtime(handle.unet.device, runtime_precision(cfg.mixed_precision, handle.unet), cfg.use_accelerate)
    device, unet_dtype = rt.device, next(handle.unet.parameters()).dtype

    cache = cache_latents(handle, dataset, device, _seed(cfg.seed, "latents"), progress=check_interrupt)
    texts = None if cfg.train_text_encoder else TextCache(handle, cfg.clip_skip)
    if texts is not None:
        texts.fill([i.caption for i in dataset.items] + ([""] if cfg.caption_dropout > 0 else []))
    order = BatchOrder(dataset, cfg.batch_size, cfg.seed, rt.rank, rt.world)

    network = LoraNetwork(handle, cfg, _seed(cfg.seed, "init")).to(device)
    groups = network.param_groups(cfg.learning_rate, cfg.text_encoder_lr)
    if not groups:
        raise NodeInputError(NODE, "target", cfg.target, "no layer of this model to train")
    params = [p for g in groups for p in g["params"]]
    optimizer = make_optimizer(cfg.optimizer, groups, cfg.weight_decay)
    start, losses = (0, [])
    if resume is not None:
        start, losses = load_state(resume, network, optimizer, cfg)
        log.info("%s: resuming %s at step %d", NODE, resume, start)
    if cfg.save_every and not cfg.overwrite:
        taken = [p for p in (lora_path(cfg, k)[1] for k in range(start + 1, cfg.steps) if k % cfg.save_every == 0)
                 if p.exists()]
        if taken:
            raise NodeInputError(NODE, "save_every", cfg.save_every, f"{taken[0]} exists; set overwrite")
    model, optimizer = rt.prepare(network, optimizer)
    if progress is not None and start:
        progress.update(start)

    ac = alphas_cumprod().to(device)
    opt_inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps it
    run = {"session_id": random.randint(0, 2**32), "started_at": time.time(),
           "batches_per_epoch": order.per_epoch,
           "num_epochs": -(-cfg.steps * cfg.gradient_accumulation * rt.world // order.per_epoch),
           "total_batch_size": cfg.batch_size * cfg.gradient_accumulation * rt.world,
           "optimizer": f"{type(opt_inner).__module__}.{type(opt_inner).__name__}"}
    sdir = state_dir(cfg)
    step, epoch = start, 0

    def micro_step(m: int) -> torch.Tensor:
        nonlocal epoch
        epoch, idx = order.batch(m)
        rng = random.Random(_seed(cfg.seed, "caption", m, rt.rank))
        caps = [process_caption(dataset.items[i].caption, rng, cfg.caption_dropout, cfg.shuffle_caption,
                                cfg.keep_tokens) for i in idx]
        x0 = torch.stack([cache[i]["latent"] for i in idx])  # [B, 4, h, w] float32
        g = torch.Generator().manual_seed(_seed(cfg.seed, "noise", m, rt.rank))
        noise = torch.randn(x0.shape, generator=g)
        if cfg.noise_offset:
            noise = noise + cfg.noise_offset * torch.randn((x0.shape[0], x0.shape[1], 1, 1), generator=g)
        t = torch.randint(0, 1000, (x0.shape[0],), generator=g).to(device)
        noise = noise.to(device)
        a = ac[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        target = noise if handle.prediction_type == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * x0
        if texts is not None:  # frozen encoders: cached fp32 outputs (computed outside autocast)
            cond, pooled = texts.get(caps)
        with rt.autocast():
            if texts is None:
                cond, pooled = encode_captions(handle, caps, cfg.clip_skip)
            added = None
            if handle.family == "sdxl":
                ids = torch.tensor([cache[i]["time_ids"] for i in idx], dtype=torch.float32, device=device)
                added = {"text_embeds": pooled.to(device, unet_dtype), "time_ids": ids}  # fp32, as in Sample
            pred = model(noisy.to(unet_dtype), t, encoder_hidden_states=cond.to(device, unet_dtype),
                         added_cond_kwargs=added, return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(pred.float(), target, reduction="none").mean(dim=(1, 2, 3))
        if cfg.min_snr_gamma:
            snr = a.view(-1) / (1 - a.view(-1))
            w = torch.clamp(snr, max=cfg.min_snr_gamma)
            loss = loss * (w / snr if handle.prediction_type == "epsilon" else w / (snr + 1))
        return loss.mean()

    def save_all(at_step: int, path: Path | None, overwrite: bool) -> None:
        if rt.is_main:
            if path is not None:
                write_lora(path, network, cfg, handle, dataset, run, at_step, epoch, overwrite=overwrite)
            save_state(sdir, network, optimizer, at_step, losses, cfg)
        rt.wait()

    try:
        with network.attached(), _training_modes(handle, cfg):
            while step < cfg.steps:
                factor = lr_factor(cfg, step)
                for grp in optimizer.param_groups:
                    grp["lr"] = grp["base_lr"] * factor
                total = 0.0
                for k in range(cfg.gradient_accumulation):
                    last = k == cfg.gradient_accumulation - 1
                    with (contextlib.nullcontext() if last else rt.no_sync(model)):
                        loss = micro_step(step * cfg.gradient_accumulation + k) / cfg.gradient_accumulation
                        rt.backward(loss)
                    total += rt.mean(loss)
                rt.step(optimizer, params, cfg.max_grad_norm)
                optimizer.zero_grad(set_to_none=True)
                step += 1
                losses.append(total)
                if cfg.save_every and step % cfg.save_every == 0 and step < cfg.steps:
                    save_all(step, lora_path(cfg, step)[1], overwrite=cfg.overwrite)
                if cfg.sample_every and step % cfg.sample_every == 0 and rt.is_main:
                    _sample(handle, cfg, step)
                if progress is not None:
                    note = getattr(progress, "note_loss", None)  # the editor's live loss, when shown
                    if note is not None:
                        note(float(total))
                    progress.update(1)  # raises on ComfyUI's Cancel
                else:
                    check_interrupt()
    except BaseException as e:
        if _is_interrupt(e):
            log.warning("%s: interrupted at step %d; state saved to %s (resume from it)", NODE, step, sdir)
            save_all(step, None, overwrite=True)
        raise
    save_all(step, final_path, overwrite=cfg.overwrite)
    new_handle, _ = add_loras(handle, [StackEntry(name, 1.0, 1.0)], NODE, "output_name")
    return TrainResult(new_handle, name, final_path, tuple(losses), step, sdir)


def _sample(handle, cfg: TrainConfig, step: int) -> None:
    """Render cfg.sample_prompt with the LoRA as it is now (the hooks are attached)."""
    from ..io.image_io import save_images
    from ..sampling.txt2img import SampleSettings, generate

    s = SampleSettings(cfg.sample_prompt, seed=cfg.seed, steps=cfg.sample_steps, width=cfg.resolution,
                       height=cfg.resolution)
    with torch.no_grad():
        images = generate(handle, s)
    save_images(images, f"{STATE_FOLDER}/{cfg.output_name}_samples/step{step:08d}", node=NODE)
