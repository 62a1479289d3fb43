"""Node definitions for the train area (registered by node_defs.py): Train LoRA."""
from __future__ import annotations

MODEL = "LORA_LAB_MODEL"
CATEGORY = "LoRA Lab/train"
NODE = "LoraLabTrainLora"


def _adv(kind, **opts):
    opts["advanced"] = True  # shown under "advanced" where the frontend supports it
    return (kind, opts)


class LoraLabTrainLora:
    """Train LoRA: kohya-style LoRA training on a folder of captioned images; writes the file
    into the loras folder and returns the model with it applied."""

    CATEGORY = CATEGORY
    RETURN_TYPES = (MODEL, "STRING", "IMAGE")
    RETURN_NAMES = ("model", "lora_name", "loss_curve")
    FUNCTION = "train"
    OUTPUT_NODE = True
    DESCRIPTION = ("Trains a LoRA (kohya format, full ss_* metadata) on images with .txt/.caption files or "
                   "<repeats>_<class tokens> folders; Cancel stops cleanly and keeps a resumable state.")

    @classmethod
    def INPUT_TYPES(cls):
        from ..train.train_config import (
            LR_SCHEDULERS,
            MIXED_PRECISION,
            SAVE_DTYPES,
            TARGETS,
            available_optimizers,
        )

        return {
            "required": {
                "model": (MODEL,),
                "dataset_dir": ("STRING", {"default": "", "tooltip": "folder of images (+ .txt/.caption) or of "
                                           "<repeats>_<class tokens> sub-folders"}),
                "output_name": ("STRING", {"default": "my_lora", "tooltip": "file name in the loras folder"}),
                "steps": ("INT", {"default": 500, "min": 1, "max": 1_000_000}),
                "rank": ("INT", {"default": 16, "min": 1, "max": 1024}),
                "alpha": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 1024.0, "step": 0.5}),
                "learning_rate": ("FLOAT", {"default": 1e-4, "min": 0.0, "max": 10.0, "step": 1e-5, "round": False}),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 256}),
                "resolution": ("INT", {"default": 512, "min": 16, "max": 4096, "step": 8}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF}),
            },
            "optional": {
                "text_encoder_lr": _adv("FLOAT", default=0.0, min=0.0, max=10.0, step=1e-5, round=False,
                                        tooltip="0 keeps the text encoder frozen (its outputs are cached)"),
                "target": (list(TARGETS), {"default": "attention+ff", "advanced": True,
                                           "tooltip": "attention+ff is kohya's default; +conv trains LoCon"}),
                "conv_rank": _adv("INT", default=0, min=0, max=1024, tooltip="3x3 conv rank; 0 = rank"),
                "conv_alpha": _adv("FLOAT", default=0.0, min=0.0, max=1024.0, step=0.5, tooltip="0 = alpha"),
                "optimizer": (available_optimizers(), {"advanced": True,
                                                       "tooltip": "8-bit AdamW / Prodigy when bitsandbytes / prodigyopt are installed"}),
                "weight_decay": _adv("FLOAT", default=0.01, min=0.0, max=10.0, step=0.001),
                "lr_scheduler": (list(LR_SCHEDULERS), {"advanced": True}),
                "lr_warmup_steps": _adv("INT", default=0, min=0, max=1_000_000),
                "gradient_accumulation": _adv("INT", default=1, min=1, max=1024),
                "max_grad_norm": _adv("FLOAT", default=1.0, min=0.0, max=100.0, step=0.1, tooltip="0 = no clipping"),
                "mixed_precision": (list(MIXED_PRECISION), {"advanced": True}),
                "gradient_checkpointing": _adv("BOOLEAN", default=False),
                "min_snr_gamma": _adv("FLOAT", default=0.0, min=0.0, max=100.0, step=0.5, tooltip="0 = off; 5 is common"),
                "noise_offset": _adv("FLOAT", default=0.0, min=0.0, max=1.0, step=0.01),
                "caption_dropout": _adv("FLOAT", default=0.0, min=0.0, max=1.0, step=0.01),
                "shuffle_caption": _adv("BOOLEAN", default=False),
                "keep_tokens": _adv("INT", default=0, min=0, max=255),
                "clip_skip": _adv("INT", default=0, min=0, max=24, tooltip="0 = the family's default"),
                "enable_bucket": _adv("BOOLEAN", default=True, tooltip="aspect-ratio buckets"),
                "save_every": _adv("INT", default=0, min=0, max=1_000_000, tooltip="0 = only the final file"),
                "sample_every": _adv("INT", default=0, min=0, max=1_000_000),
                "sample_prompt": _adv("STRING", default="", multiline=True),
                "sample_steps": _adv("INT", default=20, min=1, max=1000),
                "resume": _adv("STRING", default="", tooltip="a state folder, or 'last' for this output_name's"),
                "save_dtype": (list(SAVE_DTYPES), {"advanced": True}),
                "overwrite": _adv("BOOLEAN", default=False),
                "training_comment": _adv("STRING", default=""),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def train(self, model, unique_id=None, **kwargs):
        from ..demo.demo_lora import DEMO_DATASET, ensure_demo_dataset
        from ..io import paths
        from ..io.errors import NodeInputError
        from ..io.progress import Progress
        from ..model.handle import ModelHandle
        from ..train.train_config import TrainConfig
        from ..train.train_export import loss_curve_image
        from ..train.train_loop import train_lora

        if not isinstance(model, ModelHandle):
            raise NodeInputError(NODE, "model", type(model).__name__, "expected a LoRA Lab model")
        if kwargs.get("dataset_dir") == DEMO_DATASET:  # the example workflow's tiny dataset
            kwargs["dataset_dir"] = str(ensure_demo_dataset(paths.models_dir() / "datasets" / DEMO_DATASET))
        cfg = TrainConfig(**kwargs)
        with Progress(cfg.steps, desc="train") as bar:
            result = train_lora(model, cfg, progress=_EditorProgress(bar, unique_id, cfg.steps))
        return (result.handle, result.lora_name, loss_curve_image(list(result.losses)))


class _EditorProgress:
    """The node's progress bar, also reporting step, loss and ETA to the editor (in ComfyUI)."""

    def __init__(self, bar, node_id, total: int):
        import time

        self.bar, self.node_id, self.total = bar, node_id, total
        self.step, self.loss, self.t0 = 0, None, time.monotonic()

    def note_loss(self, loss: float) -> None:
        self.loss = loss

    def update(self, n: int = 1) -> None:
        import time

        from .server_routes import report_train_progress

        self.bar.update(n)
        self.step += n
        rate = self.step / max(time.monotonic() - self.t0, 1e-9)
        report_train_progress(self.node_id, self.step, self.total, self.loss, (self.total - self.step) / rate)


NODE_CLASS_MAPPINGS: dict = {"LoraLabTrainLora": LoraLabTrainLora}
NODE_DISPLAY_NAME_MAPPINGS: dict = {"LoraLabTrainLora": "Train LoRA (LoRA Lab)"}
