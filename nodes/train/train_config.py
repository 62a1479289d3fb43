"""Training settings: one typed dataclass, checked in __post_init__ (messages quote the value).

The field names are the Train LoRA node's input names and the `lora-lab train` options
(with `-` for `_`), so one object describes a run wherever it comes from.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math
from dataclasses import dataclass

from ..io.errors import NodeInputError

NODE = "LoraLabTrainLora"

TARGETS = ("attention", "attention+ff", "attention+ff+conv")
OPTIMIZERS = ("adamw", "adamw8bit", "prodigy")
LR_SCHEDULERS = ("constant", "cosine", "linear")
MIXED_PRECISION = ("no", "fp16", "bf16")
SAVE_DTYPES = ("fp16", "bf16", "fp32")

# Fields that fix the shape of the trained network: a resumed state must agree on them.
STRUCTURAL = ("rank", "alpha", "conv_rank", "conv_alpha", "target", "train_text_encoder", "optimizer")


@dataclass(frozen=True)
class TrainConfig:
    dataset_dir: str
    output_name: str
    steps: int = 500
    rank: int = 16
    alpha: float = 8.0
    learning_rate: float = 1e-4
    batch_size: int = 1
    resolution: int = 512
    seed: int = 0
    # ---- advanced
    text_encoder_lr: float = 0.0  # 0 keeps the text encoder(s) frozen (and their outputs cached)
    target: str = "attention+ff"  # attention | attention+ff (kohya's default) | attention+ff+conv (LoCon)
    conv_rank: int = 0  # rank of 3x3 conv layers with target attention+ff+conv; 0 = rank
    conv_alpha: float = 0.0  # 0 = alpha
    optimizer: str = "adamw"
    weight_decay: float = 0.01
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    gradient_accumulation: int = 1
    max_grad_norm: float = 1.0  # 0 = no clipping
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    min_snr_gamma: float = 0.0  # 0 = off (5 is the paper's value)
    noise_offset: float = 0.0
    caption_dropout: float = 0.0  # probability of training a sample on the empty caption
    shuffle_caption: bool = False  # shuffle the comma-separated tags of each caption
    keep_tokens: int = 0  # leading tags kept in place when shuffling
    clip_skip: int = 0  # 0 = the family's default (A1111 terms)
    enable_bucket: bool = True
    save_every: int = 0  # also write <name>-step<N>.safetensors every N steps (0 = off)
    sample_every: int = 0  # render sample_prompt every N steps into the output folder (0 = off)
    sample_prompt: str = ""
    sample_steps: int = 20
    resume: str = ""  # a state folder written by an earlier run ("" = start fresh)
    save_dtype: str = "fp16"
    overwrite: bool = False
    training_comment: str = ""
    use_accelerate: bool = True  # use accelerate when it is installed

    def __post_init__(self):
        def bad(name, reason):
            raise NodeInputError(NODE, name, getattr(self, name), reason)

        if not isinstance(self.dataset_dir, str) or not self.dataset_dir.strip():
            bad("dataset_dir", "give the folder of training images")
        name = self.output_name
        if not isinstance(name, str) or not name.strip() or name.strip() != name or name.endswith(("/", "\\")):
            bad("output_name", "give a file name (no surrounding spaces), e.g. my_style")
        ints = {"steps": 1, "rank": 1, "batch_size": 1, "resolution": 16, "gradient_accumulation": 1,
                "lr_warmup_steps": 0, "keep_tokens": 0, "clip_skip": 0, "save_every": 0, "sample_every": 0,
                "conv_rank": 0, "seed": 0, "sample_steps": 1}
        for field, low in ints.items():
            v = getattr(self, field)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                bad(field, f"must be an integer >= {low}")
        if self.resolution % 8:
            bad("resolution", "must be a multiple of 8")
        floats = {"alpha": (0.0, None), "learning_rate": (0.0, None), "text_encoder_lr": (0.0, None),
                  "conv_alpha": (0.0, None), "weight_decay": (0.0, None), "max_grad_norm": (0.0, None),
                  "min_snr_gamma": (0.0, None), "noise_offset": (0.0, None), "caption_dropout": (0.0, 1.0)}
        for field, (low, high) in floats.items():
            v = getattr(self, field)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < low \
                    or (high is not None and v > high):
                bad(field, f"must be a number >= {low}" + (f" and <= {high}" if high is not None else ""))
        if self.learning_rate == 0 and self.text_encoder_lr == 0:
            bad("learning_rate", "must be > 0 (nothing would be trained)")
        choices = {"target": TARGETS, "optimizer": OPTIMIZERS, "lr_scheduler": LR_SCHEDULERS,
                   "mixed_precision": MIXED_PRECISION, "save_dtype": SAVE_DTYPES}
        for field, allowed in choices.items():
            if getattr(self, field) not in allowed:
                bad(field, f"expected one of {list(allowed)}")
        if self.sample_every and not self.sample_prompt.strip():
            bad("sample_prompt", "sample_every is set: give the prompt to render")

    # ---- derived
    @property
    def train_text_encoder(self) -> bool:
        return self.text_encoder_lr > 0

    @property
    def effective_conv_rank(self) -> int:
        return self.conv_rank or self.rank

    @property
    def effective_conv_alpha(self) -> float:
        return self.conv_alpha or self.alpha

    def structure(self) -> dict:
        """What a resumed state must share with this run."""
        return {k: getattr(self, k) for k in STRUCTURAL}

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


# One line per field: the `lora-lab train --help` text (the defaults are added from the fields).
FIELD_HELP = {
    "dataset_dir": "folder of images (+ same-name .txt/.caption files) or of <repeats>_<class tokens> sub-folders",
    "output_name": "name of the LoRA file written to the loras folder (e.g. my_style)",
    "steps": "optimizer steps to train",
    "rank": "LoRA rank (network dim)",
    "alpha": "LoRA alpha (the scale is alpha / rank)",
    "learning_rate": "learning rate of the UNet's LoRA layers",
    "batch_size": "images per step (each batch is one bucket)",
    "resolution": "training resolution (buckets have an area of at most resolution^2; a multiple of 8)",
    "seed": "seed of the noise, the batch order and the LoRA's initial weights",
    "text_encoder_lr": "learning rate of the text encoder(s); 0 keeps them frozen (their outputs are cached)",
    "target": "layers to train: attention, attention+ff (kohya's default) or attention+ff+conv (LoCon)",
    "conv_rank": "rank of the 3x3 conv layers with target attention+ff+conv (0 = rank)",
    "conv_alpha": "alpha of the 3x3 conv layers (0 = alpha)",
    "optimizer": "adamw; adamw8bit needs bitsandbytes, prodigy needs prodigyopt",
    "weight_decay": "AdamW weight decay",
    "lr_scheduler": "learning-rate schedule after the warmup",
    "lr_warmup_steps": "steps of linear warmup",
    "gradient_accumulation": "micro-batches per optimizer step",
    "max_grad_norm": "gradient clipping norm (0 = no clipping)",
    "mixed_precision": "autocast dtype (the LoRA weights stay fp32)",
    "gradient_checkpointing": "recompute activations in the backward pass (less memory, slower)",
    "min_snr_gamma": "min-SNR loss weighting gamma (0 = off; 5 is the paper's value)",
    "noise_offset": "noise offset (brighter/darker images; 0 = off)",
    "caption_dropout": "probability of training a sample on the empty caption",
    "shuffle_caption": "shuffle the comma-separated tags of each caption",
    "keep_tokens": "leading tags kept in place when shuffling",
    "clip_skip": "text-encoder layer to use (0 = the family's default; A1111 terms)",
    "enable_bucket": "aspect-ratio buckets (off: every image is cropped to resolution x resolution)",
    "save_every": "also write <name>-step<N>.safetensors every N steps (0 = off)",
    "sample_every": "render sample_prompt every N steps (0 = off)",
    "sample_prompt": "prompt of the samples rendered during training",
    "sample_steps": "sampling steps of those samples",
    "resume": "a state folder of an earlier run, or 'last' for this output name's ('' = start fresh)",
    "save_dtype": "dtype of the saved LoRA",
    "overwrite": "replace an existing LoRA file of that name",
    "training_comment": "text stored as ss_training_comment in the file",
    "use_accelerate": "use accelerate when it is installed",
}


def lr_factor(cfg: TrainConfig, step: int) -> float:
    """Multiplier of the base learning rates for optimizer step `step` (0-based), with warmup.

    Warmup rises linearly from 1/(warmup+1)... to 1; then constant, linear decay to 0, or a
    half-cosine to 0 over the remaining steps (diffusers' get_scheduler shapes).
    """
    warm = cfg.lr_warmup_steps
    if step < warm:
        return (step + 1) / (warm + 1)
    if cfg.lr_scheduler == "constant":
        return 1.0
    rest = max(1, cfg.steps - warm)
    progress = min(1.0, (step - warm) / rest)
    if cfg.lr_scheduler == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def available_optimizers() -> list[str]:
    """The optimizers installed here (torch-free: the Train node lists them without importing torch)."""
    out = ["adamw"]
    if importlib.util.find_spec("bitsandbytes") is not None:
        out.append("adamw8bit")
    if importlib.util.find_spec("prodigyopt") is not None:
        out.append("prodigy")
    return out
