"""Write the CLIP tokenizer folders shipped in the package, from OpenAI's BPE vocabulary.

    python -m lora_lab.nodes.build_tokenizer SOURCE [--out DIR]

SOURCE is `bpe_simple_vocab_16e6.txt.gz` or the open_clip_torch wheel that ships it (a zip;
the .gz is read out of it, nothing is installed). Get the wheel without its dependencies:

    pip download --no-deps open-clip-torch -d /tmp/oc

The output is byte-identical on every run (fixed order, fixed JSON formatting), so the
shipped files can be checked against a rebuild. Two folders are written:

    clip_l/     SD 1.x CLIP-L (and SDXL's first encoder): pads with <|endoftext|> (49407)
    open_clip/  SD 2.x OpenCLIP-H and SDXL's bigG: pads with "!" (id 0)

Both hold the same vocab.json / merges.txt; only the pad token in the configs differs.
ComfyUI tokenizes the text of all three towers with one CLIP tokenizer and only pads
differently, so text must tokenize identically in both folders (see `special_tokens`).
"""
from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import sys
import tempfile
import zipfile
from pathlib import Path

log = logging.getLogger(__name__)

BPE_NAME = "bpe_simple_vocab_16e6.txt.gz"
# The BPE file has a header line, then more merges than CLIP uses: CLIP keeps the first
# 49152 - 256 - 2 of them, so that 256 bytes + 256 bytes</w> + merges + 2 specials = 49408.
N_MERGES = 49152 - 256 - 2  # 48894
VOCAB_SIZE = 49408
START, END = "<|startoftext|>", "<|endoftext|>"
TOKENIZERS_DIR = Path(__file__).resolve().parent / "tokenizers"
PAD = {"clip_l": END, "open_clip": "!"}


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character map, in CLIP's vocabulary order.

    Printable latin-1 bytes map to themselves and come first; the other 68 bytes map to
    chr(256 + n) in byte order and come after them.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = {b: chr(b) for b in printable}
    extra = [b for b in range(256) if b not in table]
    for n, b in enumerate(extra):
        table[b] = chr(256 + n)
    return table


def read_bpe_text(source: str | os.PathLike) -> str:
    """The decompressed BPE merge list, from the .gz itself or from a wheel holding it."""
    source = Path(source)
    if not source.is_file():
        raise FileNotFoundError(f"BPE source {str(source)!r} is not a file")
    if zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as zf:
            names = sorted(n for n in zf.namelist() if n.endswith("/" + BPE_NAME) or n == BPE_NAME)
            if not names:
                raise ValueError(f"{str(source)!r} is a zip but holds no {BPE_NAME}")
            data = zf.read(names[0])
    else:
        data = source.read_bytes()
    try:
        return gzip.decompress(data).decode("utf-8")
    except (OSError, EOFError) as e:
        raise ValueError(f"{str(source)!r} is neither a gzip BPE file nor a wheel holding one: {e}") from e


def build_vocab_and_merges(bpe_text: str) -> tuple[dict[str, int], list[str]]:
    """(token -> id in id order, merges as "a b" lines), exactly as CLIP builds them."""
    lines = bpe_text.split("\n")[1 : N_MERGES + 1]  # line 0 is the file's version header
    merges = [tuple(line.split()) for line in lines]
    bad = [m for m in merges if len(m) != 2]
    if len(merges) != N_MERGES or bad:
        raise ValueError(
            f"BPE file has {len(merges)} usable merge lines (want {N_MERGES}); "
            f"malformed: {bad[:3]!r}"
        )
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    tokens += [START, END]
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise ValueError(f"vocabulary has {len(vocab)} distinct entries, want {VOCAB_SIZE}")
    return vocab, [" ".join(m) for m in merges]


def _added_token(content: str) -> dict:
    return {
        "content": content,
        "lstrip": False,
        "normalized": True,
        "rstrip": False,
        "single_word": False,
        "special": True,
    }


def tokenizer_config(kind: str, vocab: dict[str, int]) -> dict:
    """tokenizer_config.json as HF CLIP tokenizer folders have it.

    Only <|startoftext|> / <|endoftext|> are registered as added (special) tokens. The
    open_clip pad "!" is deliberately not: registering it would make the tokenizer split
    every "!" in a prompt out as id 0, where ComfyUI (one shared tokenizer) gives the BPE
    ids. The "!" pad is applied by the prompt chunker, as ComfyUI does.
    """
    return {
        "add_prefix_space": False,
        "added_tokens_decoder": {str(vocab[t]): _added_token(t) for t in (START, END)},
        "bos_token": START,
        "clean_up_tokenization_spaces": True,
        "do_lower_case": True,
        "eos_token": END,
        "errors": "replace",
        "model_max_length": 77,
        "pad_token": PAD[kind],
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": END,
    }


def special_tokens_map(kind: str) -> dict:
    return {"bos_token": START, "eos_token": END, "pad_token": PAD[kind], "unk_token": END}


def _dump_json(obj) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def render_files(bpe_text: str) -> dict[str, bytes]:
    """{relative path: bytes} for both folders; pure, so a rebuild can be compared in memory."""
    vocab, merges = build_vocab_and_merges(bpe_text)
    # vocab.json in id order (not key-sorted): the order *is* the id assignment, and it is
    # what HF's own CLIP vocab files look like. One line, like theirs.
    vocab_json = json.dumps(vocab, ensure_ascii=False, separators=(",", ":")) + "\n"
    merges_txt = "#version: 0.2\n" + "".join(m + "\n" for m in merges)
    out: dict[str, bytes] = {}
    for kind in ("clip_l", "open_clip"):
        out[f"{kind}/vocab.json"] = vocab_json.encode("utf-8")
        out[f"{kind}/merges.txt"] = merges_txt.encode("utf-8")
        out[f"{kind}/tokenizer_config.json"] = _dump_json(tokenizer_config(kind, vocab)).encode("utf-8")
        out[f"{kind}/special_tokens_map.json"] = _dump_json(special_tokens_map(kind)).encode("utf-8")
    return out


def write_files(files: dict[str, bytes], out_dir: str | os.PathLike) -> list[Path]:
    """Write each file atomically (temp file in the same folder, then rename)."""
    out_dir = Path(out_dir)
    written = []
    for rel, data in sorted(files.items()):
        path = out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o644)  # mkstemp makes 0600; package data must be world-readable
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        written.append(path)
    return written


def _holds_bpe(path: Path) -> bool:
    try:
        if path.name == BPE_NAME:
            return True
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as zf:
            return any(n.endswith("/" + BPE_NAME) for n in zf.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def find_bpe_source() -> Path | None:
    """A local BPE source, without network: $LORA_LAB_BPE_SOURCE, else pip's cache.

    pip keeps downloaded wheels as opaque files (http cache bodies, built-wheel cache), so
    the cache is scanned for a zip of wheel-like size that holds the BPE file.
    """
    env = os.environ.get("LORA_LAB_BPE_SOURCE")
    if env:
        path = Path(env)
        if not path.is_file():
            raise FileNotFoundError(f"LORA_LAB_BPE_SOURCE={env!r} is not a file")
        return path
    roots = []
    if os.environ.get("PIP_CACHE_DIR"):
        roots.append(Path(os.environ["PIP_CACHE_DIR"]))
    roots.append(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pip")
    for root in roots:
        if not root.is_dir():
            continue
        for dirpath, _, names in sorted(os.walk(root)):
            for name in sorted(names):
                path = Path(dirpath) / name
                try:
                    size = path.stat().st_size
                except OSError:
                    continue
                # open_clip wheels are ~1.5 MB; skip torch-sized blobs and tiny metadata
                if 500_000 <= size <= 20_000_000 and _holds_bpe(path):
                    return path
    return None


def build(source: str | os.PathLike, out_dir: str | os.PathLike = TOKENIZERS_DIR) -> list[Path]:
    return write_files(render_files(read_bpe_text(source)), out_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help=f"{BPE_NAME} or an open_clip_torch .whl")
    parser.add_argument("--out", default=str(TOKENIZERS_DIR), help="output folder (default: the package's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for path in build(args.source, args.out):
        log.info("wrote %s (%d bytes)", path, path.stat().st_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
