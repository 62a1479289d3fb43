"""`lora-lab merge` (bake LoRAs into a checkpoint) and `lora-lab lora merge|resize|extract|save`.

    lora-lab merge CKPT --lora NAME[:UNET[:TEXT]]... -o OUT.safetensors
                   [--dtype same|fp16|bf16|fp32] [--format single-file|diffusers] [--overwrite]
    lora-lab lora merge   --model CKPT --lora NAME[:UNET[:TEXT]]... -o OUT [--mode exact|svd] [--rank R]
    lora-lab lora resize  LORA -o OUT --rank R [--conv-rank R] [--method fixed|sv_ratio|sv_fro|sv_cumulative]
                          [--param X]
    lora-lab lora extract --base CKPT --tuned CKPT -o OUT --rank R [--conv-rank R] [--min-diff X]
    lora-lab lora save    LORA -o OUT [--model CKPT]
    (every lora tool: [--dtype fp16|bf16|fp32] [--overwrite]; every command: [--models-dir DIR])

CKPT / LORA: a file path, or a name inside <models-dir>/checkpoints or /loras. Merging a
single-file .safetensors checkpoint reads only its header up front and then streams it: the
model is never loaded. Outputs are written atomically and never overwrite without --overwrite.
Exit codes: 0 written, 1 failed, 2 bad command line.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)

CKPT_DTYPES = ["same", "fp16", "bf16", "fp32"]
LORA_DTYPES = ["fp16", "bf16", "fp32"]


def _common(p: argparse.ArgumentParser, dtypes: list, default: str,
            output_help: str = "output .safetensors file") -> None:
    p.add_argument("-o", "--output", required=True, help=output_help)
    p.add_argument("--dtype", choices=dtypes, default=default, help=f"saved dtype (default {default})")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--models-dir",
                   help="models folder (checkpoints/, loras/); default $LORA_LAB_MODELS_DIR or ./models")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def _lora_arg(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--lora", action="append", default=[], required=required, metavar="NAME[:UNET[:TEXT]]",
                   help="a LoRA with its UNet and text strengths (default 1); repeat for a stack, in order")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`lora-lab merge`."""
    p.add_argument("checkpoint", metavar="CKPT", help="base checkpoint (file or name in the checkpoints folder)")
    _lora_arg(p, required=False)
    p.add_argument("--format", choices=["single-file", "diffusers"], default="single-file")
    _common(p, CKPT_DTYPES, "same", "output file (a folder for --format diffusers)")


def add_lora_arguments(p: argparse.ArgumentParser) -> None:
    """`lora-lab lora TOOL`."""
    sub = p.add_subparsers(dest="tool", metavar="TOOL", required=True)
    m = sub.add_parser("merge", help="merge a LoRA stack into one LoRA (exact, or SVD to a rank)")
    m.add_argument("--model", required=True, metavar="CKPT", help="a checkpoint of the LoRAs' family (names, shapes)")
    _lora_arg(m, required=True)
    m.add_argument("--mode", choices=["exact", "svd"], default="exact")
    r = sub.add_parser("resize", help="resize a LoRA to a fixed or dynamic rank (scale kept)")
    r.add_argument("lora", metavar="LORA")
    r.add_argument("--method", choices=["fixed", "sv_ratio", "sv_fro", "sv_cumulative"], default="fixed")
    r.add_argument("--param", type=float, help="sv_ratio: ratio >= 1; sv_fro / sv_cumulative: fraction (0, 1]")
    e = sub.add_parser("extract", help="extract a LoRA from two checkpoints (tuned - base) by truncated SVD")
    e.add_argument("--base", required=True, metavar="CKPT")
    e.add_argument("--tuned", required=True, metavar="CKPT")
    e.add_argument("--min-diff", type=float, default=0.01, help="leave out a text encoder that changed less")
    s = sub.add_parser("save", help="re-save a LoRA in kohya format with ss_* metadata and hashes")
    s.add_argument("lora", metavar="LORA")
    s.add_argument("--model", metavar="CKPT", help="rename to kohya's names for this model (any format in)")
    for q in (m, r, e):
        q.add_argument("--rank", type=int, default=32, help="(largest) rank; default 32")
        q.add_argument("--conv-rank", type=int, default=0,
                       help="rank of 3x3 conv layers (0: same as --rank; for extract: leave them out)")
    for q in (m, r, e, s):
        _common(q, LORA_DTYPES, "fp16")


# ------------------------------------------------------------------------------- helpers
def _resolve(name: str, kind: str) -> Path:
    from ..demo.demo_lora import ensure_if_demo
    from ..io.paths import resolve
    from ..lora.lora_stack import resolve_lora

    p = Path(name).expanduser()
    try:
        if p.exists():
            return p
    except (OSError, ValueError):  # a NUL byte, a name too long: resolve() below names it
        pass
    if kind != "loras":
        from ..demo.demo import DEMO_NAME, ensure_demo_checkpoint

        if name == DEMO_NAME:  # the README's merge example works on a fresh machine
            return ensure_demo_checkpoint()
        return resolve(kind, name)
    ensure_if_demo(name)
    return resolve_lora(name)


def _model(name: str, weights: bool):
    """A skeleton (header only) for a .safetensors file unless the weights are needed."""
    from ..merge.merge import skeleton_handle
    from ..model.checkpoint import load_checkpoint

    path = _resolve(name, "checkpoints")
    if not weights and path.is_file() and path.suffix.lower() == ".safetensors":
        return skeleton_handle(path)
    return load_checkpoint(path)


def _needs_weights(raws) -> bool:
    from ..lora.adapters_ortho import WEIGHT_KINDS

    return any(a.dora_scale is not None or a.kind in ("ia3", *WEIGHT_KINDS)
               for raw in raws for a in raw.adapters.values())


def _read_loras(specs: list[str]) -> list:
    from ..lora.lora_formats import read_lora
    from ..lora.lora_stack import parse_stack_text

    out = []
    for spec in specs:
        entries = parse_stack_text(spec, node="lora-lab", input_name="--lora")
        if len(entries) != 1:
            raise ValueError(f"--lora {spec!r}: expected NAME[:UNET[:TEXT]]")
        path = _resolve(entries[0].name, "loras")
        out.append((entries[0], path, read_lora(path)))
    return out


def _with_loras(handle, loras: list):
    from ..io.errors import LoraLabError
    from ..lora.patcher import LoraPatch, match_report
    from ..merge.merge_meta import file_sha256

    patches = []
    for entry, path, raw in loras:
        report = match_report(handle, raw)
        if not report.adapters:
            raise LoraLabError(f"{path.name}: no layer of this {handle.label} model matches the file")
        if report.unmatched:
            log.warning("%s: %d of %d layers matched; unmatched e.g. %s", path.name, len(report.adapters),
                        report.total, list(report.unmatched[:3]))
        patches.append(LoraPatch(path.name, raw, entry.strength_unet, entry.strength_text, None, file_sha256(path)))
    return handle.with_patches(tuple(patches))


# ---------------------------------------------------------------------------------- main
def _run(fn, args) -> int:
    from ..io.errors import LoraLabError
    from ..io.paths import standalone_dirs

    try:
        with standalone_dirs(args.models_dir, None):
            path = fn(args)
    except (LoraLabError, FileExistsError, OSError, ValueError) as e:
        print(f"lora-lab: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


def _merge_ckpt(args) -> Path:
    from ..io.destination import Destination
    from ..merge.merge import compute_threads, merge_checkpoint

    dest = Destination(args.output, overwrite=args.overwrite)
    dest.check()  # before any work
    with compute_threads():  # also for reading the LoRAs: many small conversions
        loras = _read_loras(args.lora)
        handle = _with_loras(_model(args.checkpoint, args.format == "diffusers"), loras)
        return merge_checkpoint(handle, dest, args.dtype, args.format, progress=not args.quiet)


def _lora_tool(args) -> Path:
    from ..io.destination import Destination
    from ..lora.lora_formats import read_lora
    from ..lora.patcher import LoraPatch
    from ..merge.lora_resize import extract_lora, resize_lora
    from ..merge.lora_save import lora_set_from_raw, save_lora
    from ..merge.lora_tools import RankRule, merge_stack

    dest = Destination(args.output, overwrite=args.overwrite)
    dest.check()  # before any work
    if args.tool == "merge":
        loras = _read_loras(args.lora)
        handle = _with_loras(_model(args.model, _needs_weights(raw for _, _, raw in loras)), loras)
        rule = RankRule(args.rank, args.conv_rank)
        lset = merge_stack(handle, args.mode, rule)
    elif args.tool == "resize":
        raw = read_lora(_resolve(args.lora, "loras"))
        lset = resize_lora(lora_set_from_raw(raw), RankRule(args.rank, args.conv_rank, args.method, args.param))
    elif args.tool == "extract":
        base, tuned = _model(args.base, True), _model(args.tuned, True)
        lset = extract_lora(base, tuned, RankRule(args.rank, args.conv_rank), args.min_diff,
                            use_conv=args.conv_rank > 0)
    else:  # save
        path = _resolve(args.lora, "loras")
        raw = read_lora(path)
        if args.model:
            handle = _model(args.model, _needs_weights([raw]))
            lset = merge_stack(handle.with_patches((LoraPatch(path.name, raw),)), "exact")
        else:
            lset = lora_set_from_raw(raw)
    return save_lora(lset, dest, args.dtype)


def main(args, registry=None) -> int:
    """`lora-lab merge`: exit code."""
    return _run(_merge_ckpt, args)


def main_lora(args, registry=None) -> int:
    """`lora-lab lora TOOL`: exit code."""
    return _run(_lora_tool, args)
