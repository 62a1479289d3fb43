"""Where training runs: device, mixed precision, backward, clipping, processes; optimizers;
resumable states.

`make_runtime` uses accelerate when it is installed (device placement, mixed precision with
its gradient scaler, several GPUs under `accelerate launch`), else a plain-torch runtime
with the same interface (CPU, one GPU). The loop only talks to this interface.

A state folder holds what a resumed run needs to continue bit for bit: the LoRA parameters
(fp32 safetensors), the optimizer state (torch.save, read back with weights_only=True), and
train_state.json (step, losses, the run's structural settings). Every other random choice
is a pure function of (seed, step), so no RNG state is kept.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import shutil
from pathlib import Path

import torch

from ..io.errors import NodeInputError
from .train_config import NODE

log = logging.getLogger(__name__)

STATE_VERSION = 1


class PlainRuntime:
    """One process, one device; torch.autocast + GradScaler for fp16 on CUDA."""

    def __init__(self, device, mixed_precision: str):
        self.device = torch.device(device)
        self.mixed_precision = mixed_precision
        self.is_main, self.rank, self.world = True, 0, 1
        self.scaler = None
        if mixed_precision == "fp16" and self.device.type == "cuda":
            self.scaler = torch.amp.GradScaler("cuda")

    def prepare(self, network, optimizer):
        return network.to(self.device), optimizer

    def autocast(self):
        if self.mixed_precision == "no":
            return contextlib.nullcontext()
        dtype = torch.float16 if self.mixed_precision == "fp16" else torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype)

    def no_sync(self, model):
        return contextlib.nullcontext()

    def backward(self, loss):
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def step(self, optimizer, params, max_norm: float):
        if self.scaler:
            self.scaler.unscale_(optimizer)
        if max_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, max_norm)
        if self.scaler:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()

    def mean(self, value: torch.Tensor) -> float:
        return float(value.detach())

    def wait(self):
        pass


class AccelerateRuntime(PlainRuntime):
    """accelerate.Accelerator: its device, autocast, scaler, DDP wrapping and gathers."""

    def __init__(self, mixed_precision: str, cpu: bool):
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState, PartialState

        try:
            self.acc = Accelerator(mixed_precision=mixed_precision, cpu=cpu)
        except ValueError as e:
            # accelerate keeps one process-wide state; a long-lived process (ComfyUI) that trains
            # again with other settings must reset it. Under `accelerate launch` the launcher's
            # settings stand, so say so instead.
            if "already been initialized" not in str(e) or PartialState().num_processes > 1:
                raise NodeInputError(NODE, "mixed_precision", mixed_precision, str(e)) from None
            AcceleratorState._reset_state(reset_partial_state=True)
            self.acc = Accelerator(mixed_precision=mixed_precision, cpu=cpu)
        self.device = self.acc.device
        self.mixed_precision = mixed_precision
        self.is_main, self.rank, self.world = self.acc.is_main_process, self.acc.process_index, self.acc.num_processes
        self.scaler = None

    def prepare(self, network, optimizer):
        return self.acc.prepare(network, optimizer)

    def autocast(self):
        return self.acc.autocast()

    def no_sync(self, model):
        return self.acc.no_sync(model)

    def backward(self, loss):
        self.acc.backward(loss)

    def step(self, optimizer, params, max_norm: float):
        if max_norm > 0:
            self.acc.clip_grad_norm_(params, max_norm)
        optimizer.step()

    def mean(self, value: torch.Tensor) -> float:
        return float(self.acc.gather(value.detach()[None]).mean())

    def wait(self):
        self.acc.wait_for_everyone()


def _same_device(a: torch.device, b: torch.device) -> bool:
    """cuda and cuda:0 are one device when 0 is the current one (accelerate says `cuda` for a
    single process; a model's parameters always say `cuda:N`)."""
    if a.type != b.type:
        return False
    if a.index is None or b.index is None:
        if a.type != "cuda":
            return True
        current = torch.cuda.current_device()
        return (current if a.index is None else a.index) == (current if b.index is None else b.index)
    return a.index == b.index


def make_runtime(device, mixed_precision: str, use_accelerate: bool = True):
    """accelerate's runtime when installed (and wanted, and its device is `device`), else plain."""
    device = torch.device(device)
    if mixed_precision == "fp16" and device.type == "cpu":
        raise NodeInputError(NODE, "mixed_precision", "fp16", "fp16 needs a GPU; use bf16 or no on the CPU")
    if use_accelerate and importlib.util.find_spec("accelerate") is not None:
        rt = AccelerateRuntime(mixed_precision, cpu=device.type == "cpu")
        if _same_device(rt.device, device):
            return rt
        log.info("%s: accelerate picked %s but the model is on %s; training there without it", NODE, rt.device, device)
    return PlainRuntime(device, mixed_precision)


# ----------------------------------------------------------------------------- optimizers
def make_optimizer(name: str, groups: list[dict], weight_decay: float):
    if name == "adamw":
        return torch.optim.AdamW(groups, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay)
    if name == "adamw8bit":
        if importlib.util.find_spec("bitsandbytes") is None:
            raise NodeInputError(NODE, "optimizer", name, "needs the bitsandbytes package (pip install bitsandbytes)")
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(groups, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay)
    if name == "prodigy":
        if importlib.util.find_spec("prodigyopt") is None:
            raise NodeInputError(NODE, "optimizer", name, "needs the prodigyopt package (pip install prodigyopt)")
        from prodigyopt import Prodigy

        return Prodigy(groups, weight_decay=weight_decay)
    raise NodeInputError(NODE, "optimizer", name, "unknown optimizer")


# --------------------------------------------------------------------------------- states
def save_state(folder: Path, network, optimizer, step: int, losses: list, cfg) -> Path:
    """Write the state folder atomically: a temp folder beside it, then renamed over it."""
    from ..io.safetensors_write import save_safetensors
    from ..io.temp_files import new_temp

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = new_temp(folder.parent, folder.name, is_dir=True)
    try:
        save_safetensors(network.trainable_state(), tmp / "lora_state.safetensors")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        info = {"version": STATE_VERSION, "step": step, "losses": losses, "structure": cfg.structure(),
                "seed": cfg.seed, "output_name": cfg.output_name}
        (tmp / "train_state.json").write_text(json.dumps(info), encoding="utf-8")
        old = folder.with_name(folder.name + ".old")
        if folder.exists():
            folder.rename(old)
        tmp.rename(folder)
        if old.exists():
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def load_state(folder: Path, network, optimizer, cfg) -> tuple[int, list]:
    """Restore a state folder into `network` and `optimizer`; returns (step, losses)."""
    import pickle

    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    info_path = folder / "train_state.json"
    if not info_path.is_file():
        raise NodeInputError(NODE, "resume", str(folder), "not a training state folder (no train_state.json)")
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise NodeInputError(NODE, "resume", str(folder), f"unreadable train_state.json ({e})") from None
    if not isinstance(info, dict):
        raise NodeInputError(NODE, "resume", str(folder), "train_state.json does not hold a JSON object")
    step, losses = info.get("step"), info.get("losses", [])
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise NodeInputError(NODE, "resume", str(folder), f"train_state.json: 'step' = {step!r}, not a step count")
    if not isinstance(losses, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                               for x in losses):
        raise NodeInputError(NODE, "resume", str(folder), "train_state.json: 'losses' is not a list of numbers")
    if info.get("version") != STATE_VERSION:
        raise NodeInputError(NODE, "resume", str(folder), f"state version {info.get('version')!r} is not supported")
    theirs, ours = info.get("structure", {}), cfg.structure()
    if not isinstance(theirs, dict):
        theirs = {}
    diff = {k: (theirs.get(k), v) for k, v in ours.items() if theirs.get(k) != v}
    if diff:
        raise NodeInputError(NODE, "resume", str(folder), f"the state was made with other settings "
                             f"(setting: (state, now)) {diff}")
    if step > cfg.steps:
        raise NodeInputError(NODE, "steps", cfg.steps, f"the state is already at step {step}")
    try:
        network.load_trainable_state(load_file(str(folder / "lora_state.safetensors")))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:  # corrupt/truncated, or another network
        raise NodeInputError(NODE, "resume", str(folder), f"lora_state.safetensors: {e}") from None
    try:  # weights_only: a hostile pickle is refused, never run
        opt = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True)
        optimizer.load_state_dict(opt)
    except (pickle.UnpicklingError, EOFError, OSError, RuntimeError, ValueError, KeyError, TypeError) as e:
        raise NodeInputError(NODE, "resume", str(folder), f"optimizer.pt: {type(e).__name__}: "
                             f"{str(e).splitlines()[0][:300] if str(e) else 'unreadable'}") from None
    return step, [float(x) for x in losses]
