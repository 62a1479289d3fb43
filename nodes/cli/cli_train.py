"""`lora-lab train`: the Train LoRA node from the shell, with the same options.

    lora-lab train --model CKPT --dataset-dir DIR --output-name NAME [--steps N] [--rank R] ...
    accelerate launch -m lora_lab.nodes.cli train ...      (several GPUs, one process each)

Every TrainConfig field is an option (`_` written as `-`; booleans as --x / --no-x). CKPT is
a file or diffusers folder path, or a name in <models-dir>/checkpoints. The LoRA is written
to <models-dir>/loras; states and samples to <output-dir>/lora_lab_train/.
Exit codes: 0 done, 1 failed, 2 bad options, 130 interrupted (the state is saved).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import typing
from pathlib import Path

log = logging.getLogger(__name__)

_REQUIRED = ("dataset_dir", "output_name")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..train.train_config import (
        FIELD_HELP,
        LR_SCHEDULERS,
        MIXED_PRECISION,
        OPTIMIZERS,
        SAVE_DTYPES,
        TARGETS,
        TrainConfig,
    )

    choices = {"target": TARGETS, "optimizer": OPTIMIZERS, "lr_scheduler": LR_SCHEDULERS,
               "mixed_precision": MIXED_PRECISION, "save_dtype": SAVE_DTYPES}
    parser.add_argument("--model", required=True,
                        help="checkpoint file / diffusers folder, or a name in checkpoints/ (required)")
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        opt = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        text = FIELD_HELP[f.name]
        if kind is bool:
            on = opt if f.default else "--no-" + opt[2:]
            parser.add_argument(opt, dest=f.name, action=argparse.BooleanOptionalAction, default=f.default,
                                help=f"{text} (default: {on})")
        elif f.name in _REQUIRED:
            parser.add_argument(opt, dest=f.name, required=True, type=str, help=text + " (required)")
        else:
            parser.add_argument(opt, dest=f.name, type=kind, default=f.default, choices=choices.get(f.name),
                                metavar=None if f.name in choices else f.name.upper(),
                                help=f"{text} (default: {f.default!r})")
    parser.add_argument("--models-dir",
                        help="folder with checkpoints/ and loras/ (default: $LORA_LAB_MODELS_DIR or ./models)")
    parser.add_argument("--output-dir",
                        help="folder for states and samples (default: $LORA_LAB_OUTPUT_DIR or ./output)")
    parser.add_argument("--device", default="", help="cpu, cuda, cuda:1 ... (default: accelerate's device, else CUDA if present, else cpu)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "fp32", "fp16", "bf16"),
                        help="dtype of the frozen base model (default: auto = fp32 on the CPU, bf16/fp16 on GPUs)")
    parser.add_argument("--json", action="store_true", help="print a JSON summary (default: off)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar, no summary line (default: off)")
    parser.add_argument("--verbose", action="store_true", help="debug logging (default: off)")


def _device(args, cfg):
    import importlib.util

    import torch

    if args.device:
        return torch.device(args.device)
    if cfg.use_accelerate and importlib.util.find_spec("accelerate") is not None:
        from accelerate import PartialState

        return PartialState().device  # cuda:<local rank> under accelerate launch
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _load_model(name: str, device, dtype_name: str):
    import torch

    from ..io.paths import resolve
    from ..model.checkpoint import load_checkpoint

    path = Path(name).expanduser()
    if not path.exists():
        path = resolve("checkpoints", name)
    dtype = {"auto": None, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype_name]
    return load_checkpoint(path, dtype=dtype, device=device)


def _check_dataset(cfg):
    """The config with the demo dataset's name made a folder (as the node does), once the
    dataset was scanned (headers and captions only): an empty or unreadable dataset fails in
    a second, not after the model is loaded."""
    from ..demo.demo_lora import DEMO_DATASET, ensure_demo_dataset
    from ..io import paths
    from ..train.train_data import scan_dataset

    if cfg.dataset_dir == DEMO_DATASET:
        folder = ensure_demo_dataset(paths.models_dir() / "datasets" / DEMO_DATASET)
        cfg = dataclasses.replace(cfg, dataset_dir=str(folder))
    scan_dataset(cfg.dataset_dir, cfg.resolution, cfg.enable_bucket)
    return cfg


def main(args, registry=None) -> int:
    from ..io.errors import LoraLabError
    from ..io.paths import standalone_dirs
    from ..io.progress import Progress
    from ..train.train_config import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    try:
        cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    except LoraLabError as e:
        print(f"lora-lab train: {e}", file=sys.stderr)
        return 2
    from ..train.train_loop import train_lora

    with standalone_dirs(args.models_dir, args.output_dir):
        try:
            cfg = _check_dataset(cfg)  # before the model is loaded, not after
            handle = _load_model(args.model, _device(args, cfg), args.dtype)
            with Progress(cfg.steps, desc="train", disable=args.quiet) as bar:
                result = train_lora(handle, cfg, progress=bar)
        except KeyboardInterrupt:
            print("lora-lab train: interrupted; the state is saved (resume with --resume last)", file=sys.stderr)
            return 130
        except LoraLabError as e:
            print(f"lora-lab train: {e}", file=sys.stderr)
            return 1
    summary = {"lora": str(result.path), "lora_name": result.lora_name, "steps": result.step,
               "final_loss": result.losses[-1] if result.losses else None, "state": str(result.state_dir)}
    if args.json:
        print(json.dumps(summary, indent=2))
    elif not args.quiet:
        print(f"wrote {result.path} ({result.step} steps, last loss {summary['final_loss']:.4g})")
    return 0
