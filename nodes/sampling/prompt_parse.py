"""Prompt text parsing with ComfyUI's semantics: emphasis weights and the "words" it tokenizes.

Pure string functions, no torch. The rules follow ComfyUI's `comfy/sd1_clip.py`
(`token_weights`, `parse_parentheses`, `escape_important`, and the word split of
`SDTokenizer.tokenize_with_weights`), including its treatment of unbalanced parentheses, so
a prompt written for ComfyUI conditions the model the same way here.

    "a (cat) dog"          -> [("a ", 1.0), ("cat", 1.1), (" dog", 1.0)]
    "((cat))"              -> [("cat", 1.1 * 1.1)]
    "(cat:1.3)"            -> [("cat", 1.3)]          an explicit weight replaces, never multiplies
    "(a (b:0.5) c:1.2)"    -> [("a ", 1.2), ("b", 0.5), (" c", 1.2)]
    r"\\(cat\\)"           -> [("(cat)", 1.0)]          escaped parentheses are literal text
"""
from __future__ import annotations

import logging
import re

log = logging.getLogger(__name__)

EMPHASIS = 1.1  # weight factor of one pair of parentheses
EMBEDDING_PREFIX = "embedding:"

# Escaped parentheses are swapped for control-character pairs before parsing and swapped
# back in the parsed segments (no prompt contains NUL, so they cannot clash with text).
_ESCAPES = (("\\)", "\0\1"), ("\\(", "\0\2"))


def _escape(text: str) -> str:
    for literal, placeholder in _ESCAPES:
        text = text.replace(literal, placeholder)
    return text


def _unescape(text: str) -> str:
    for literal, placeholder in _ESCAPES:
        text = text.replace(placeholder, literal[1:])
    return text


def _top_level_pieces(text: str) -> list[str]:
    """Split into plain runs and top-level "( ... )" groups, tolerating unbalanced parens.

    Depth may go negative after a stray ")": everything up to the point where depth comes
    back to zero then stays in one literal piece (ComfyUI's behaviour, kept for parity).
    """
    pieces: list[str] = []
    current = ""
    depth = 0
    for ch in text:
        if ch == "(":
            if depth == 0:
                if current:
                    pieces.append(current)
                current = "("
            else:
                current += ch
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                pieces.append(current + ")")
                current = ""
            else:
                current += ch
        else:
            current += ch
    if current:  # an unclosed "(" group ends up here as literal text
        pieces.append(current)
    return pieces


def _weighted(text: str, weight: float) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    for piece in _top_level_pieces(text):
        if len(piece) < 2 or piece[0] != "(" or piece[-1] != ")":
            out.append((piece, weight))
            continue
        inner = piece[1:-1]
        inner_weight = weight * EMPHASIS
        colon = inner.rfind(":")
        if colon > 0:  # "(text:1.3)"; a leading ":" (colon == 0) is plain text
            try:
                inner_weight = float(inner[colon + 1 :])
                inner = inner[:colon]
            except ValueError:  # "(a:b)" is emphasised text "a:b"
                pass
        out.extend(_weighted(inner, inner_weight))
    return out


def parse_weights(text: str) -> list[tuple[str, float]]:
    """[(segment text, weight)] in prompt order, escapes resolved; empty groups vanish."""
    return [(_unescape(seg), w) for seg, w in _weighted(_escape(text), 1.0)]


def segment_words(segment: str, lookup=None) -> list:
    """The pieces of one weighted segment that ComfyUI tokenizes one at a time.

    ComfyUI tokenizes a whole weighted segment at once, except that " embedding:" /
    "\\nembedding:" starts a new piece. Such a piece becomes the embedding's vectors (a
    tensor [n, D], from `lookup(name)`) followed by any text after the name; an embedding
    that `lookup` does not find (or with no lookup) is dropped with a warning and the rest of
    the piece is tokenized, as ComfyUI does. Piece boundaries matter: the chunker keeps a
    short piece whole across a 77-token boundary.
    """
    parts = re.split(f" {EMBEDDING_PREFIX}|\n{EMBEDDING_PREFIX}", segment)
    pieces = [parts[0]] + [EMBEDDING_PREFIX + p for p in parts[1:]]
    words: list = []
    for piece in pieces:
        if piece == "":
            continue
        if piece.startswith(EMBEDDING_PREFIX):
            found, piece = _embedding_piece(piece[len(EMBEDDING_PREFIX) :].strip("\n"), lookup)
            if found is not None:
                words.append(found)
            if piece == "":
                continue
        words.append(piece)
    return words


def _embedding_piece(rest: str, lookup) -> tuple:
    """(vectors or None, text left after "embedding:NAME"), ComfyUI's _try_get_embedding.

    NAME is the first whitespace-separated word. If it is not found and carries commas (e.g.
    "NAME,"), the comma-stripped name is tried and the cut-off tail is kept as text, joined
    to the rest by a space; otherwise the rest is re-joined with single spaces.
    """
    words = rest.split()
    if not words:  # "embedding:" with no name (ComfyUI raises here); nothing to drop
        log.warning("prompt has %r with no embedding name; ignored", EMBEDDING_PREFIX)
        return None, ""
    name, leftover = words[0], " ".join(words[1:])
    found = lookup(name) if lookup is not None else None
    if found is None:
        stripped = name.strip(",")
        if len(stripped) < len(name):
            found = lookup(stripped) if lookup is not None and stripped else None
            leftover = f"{name[len(stripped) :]} {leftover}"
    if found is None:
        log.warning("embedding:%s does not exist in the embeddings folder; ignored (as ComfyUI does)", name)
    return found, leftover
