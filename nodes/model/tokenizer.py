"""The shipped CLIP tokenizers (built offline by build_tokenizer from open-clip-torch's BPE
file): one per kind, loaded once. Tokenizers belong to the model: checkpoint loading pairs
each text encoder with its tokenizer; prompt encoding (sampling/) uses them."""
from __future__ import annotations

import functools
import json
from pathlib import Path

TOKENIZERS_DIR = Path(__file__).resolve().parent / "tokenizers"
TOKENIZER_KINDS = ("clip_l", "open_clip")
CHUNK_LENGTH = 77  # start + 75 tokens + end (+ pad)
END_TOKEN_TEXT = "<|endoftext|>"


@functools.lru_cache(maxsize=None)
def load_tokenizer(kind: str):
    """The shipped CLIP tokenizer (transformers CLIPTokenizer), offline, model_max_length 77.

    Cached: callers share one object and must not modify it. Both kinds tokenize text
    identically (ComfyUI uses one tokenizer for CLIP-L, OpenCLIP-H and bigG); they differ
    in pad token only: clip_l pads with <|endoftext|> (49407), open_clip with "!" (0).
    """
    if kind not in TOKENIZER_KINDS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; expected one of {TOKENIZER_KINDS}")
    from .hf_classes import clip_tokenizer_class

    CLIPTokenizer = clip_tokenizer_class()

    folder = TOKENIZERS_DIR / kind
    missing = [n for n in ("vocab.json", "merges.txt", "special_tokens_map.json") if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"tokenizer folder {str(folder)!r} lacks {missing}; rebuild it with "
            "`python -m lora_lab.nodes.model.build_tokenizer SOURCE`"
        )
    pad = json.loads((folder / "special_tokens_map.json").read_text(encoding="utf-8"))["pad_token"]
    # Load with the end token as pad, then set the real pad: declaring "!" at load time
    # registers it as an added token, and the tokenizer would then split every "!" of a
    # prompt out as id 0 instead of its BPE ids (ComfyUI gets the BPE ids).
    tok = CLIPTokenizer.from_pretrained(
        str(folder), local_files_only=True, pad_token=END_TOKEN_TEXT, model_max_length=CHUNK_LENGTH
    )
    tok.pad_token = pad
    return tok
