"""Train the two demo LoRAs with our own Train LoRA (train.train_loop) on the demo model.

    python -m lora_lab.nodes.demo.train_loras OUT_DIR [--checkpoint PATH]

Writes OUT_DIR/datasets/{style,star}/ (kohya `<repeats>_<token>` folders drawn by shapes.py) and
OUT_DIR/loras/lora-lab-demo-{style,star}.safetensors: Train LoRA's kohya file with its ss_*
metadata, plus modelspec.trigger_phrase (the tensors and sshs hashes are unchanged by it).
The committed assets were made by this script on one CPU thread.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from . import shapes as D
from .demo_lora import CHARACTER_TRIGGER, DEMO_CHARACTER, DEMO_STYLE, STYLE_TRIGGER

log = logging.getLogger(__name__)

NO_WHITE = tuple(c for c in D.COLOURS if c != "white")  # pale stripes would vanish on white
LORAS = {
    # name: (sub-folder, prompt prefix, pictures, seed, sample() keywords, training settings)
    DEMO_STYLE: ("10_" + STYLE_TRIGGER, STYLE_TRIGGER, 60, 41,
                 dict(stripes=True, colours=NO_WHITE, backgrounds=NO_WHITE),
                 dict(steps=300, rank=4, alpha=4.0, learning_rate=2e-3, batch_size=8, seed=41)),
    # the star also trains the text encoder: the base never saw the word, and with the UNet alone
    # a fifth of the stars came out as round blobs (bench/demo_quality.py: 55 % -> 90 %)
    DEMO_CHARACTER: ("10_" + CHARACTER_TRIGGER, CHARACTER_TRIGGER, 200, 42,
                     dict(shapes=("star",)),
                     dict(steps=1500, rank=8, alpha=8.0, learning_rate=3e-3, text_encoder_lr=5e-4, batch_size=8,
                          seed=42)),
}


def add_trigger_phrase(path: Path, phrase: str) -> None:
    """Rewrite a LoRA file with modelspec.trigger_phrase added to its metadata (same tensors)."""
    from safetensors import safe_open

    from ..io.safetensors_write import atomic_write, write_safetensors

    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata() or {})
        sd = {k: f.get_tensor(k).clone() for k in f.keys()}
    meta["modelspec.trigger_phrase"] = phrase
    with atomic_write(path, overwrite=True) as tmp:
        write_safetensors(sd, tmp, meta)


def train_demo_loras(out: Path, checkpoint: Path) -> list[Path]:
    from ..io import paths
    from ..model.checkpoint import load_single_file
    from ..train.train_config import TrainConfig
    from ..train.train_loop import train_lora

    written = []
    with paths.standalone_dirs(models_dir=out, output_dir=out / "output"):
        handle = load_single_file(checkpoint)
        for name, (sub, trigger, n, seed, kinds, settings) in LORAS.items():
            data = D.write_kohya_folder(out / "datasets" / Path(name).stem, sub, n, seed, prefix=trigger, **kinds)
            cfg = TrainConfig(dataset_dir=str(data), output_name=Path(name).stem, resolution=D.SIZE,
                              min_snr_gamma=5.0, overwrite=True,
                              training_comment=f"LoRA Lab demo LoRA: {trigger} (lora_lab.nodes.demo.train_loras)",
                              **{"target": "attention+ff", **settings})
            result = train_lora(handle, cfg)
            add_trigger_phrase(result.path, trigger)
            log.info("%s: %d steps, last losses %s", result.path, result.step, result.losses[-5:])
            written.append(result.path)
    return written


def main(argv=None) -> None:
    import torch

    from .demo import ensure_demo_checkpoint

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--checkpoint", default="", help="default: the demo checkpoint")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    out = Path(args.out_dir)
    ckpt = Path(args.checkpoint) if args.checkpoint else ensure_demo_checkpoint(out / "checkpoints")
    for p in train_demo_loras(out, ckpt):
        print(p)


if __name__ == "__main__":
    main()
