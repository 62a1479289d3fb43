"""The shipped CLIP tokenizers and the script that builds them."""
from __future__ import annotations

import gzip
import zipfile

import pytest

from lora_lab.nodes.model import build_tokenizer as bt
from lora_lab.nodes.model.tokenizer import TOKENIZERS_DIR, load_tokenizer

SHIPPED = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")
CAT_IDS = [49406, 320, 1125, 539, 320, 2368, 49407]


@pytest.mark.parametrize("kind", ["clip_l", "open_clip"])
def test_shipped_folders_complete(kind):
    for name in SHIPPED:
        assert (TOKENIZERS_DIR / kind / name).is_file(), f"{kind}/{name} missing"


@pytest.mark.parametrize("kind, pad", [("clip_l", 49407), ("open_clip", 0)])
def test_a_photo_of_a_cat(kind, pad):
    tok = load_tokenizer(kind)
    assert tok.model_max_length == 77
    assert len(tok) == 49408
    assert tok("a photo of a cat")["input_ids"] == CAT_IDS
    assert tok.pad_token_id == pad
    padded = tok("a photo of a cat", padding="max_length", max_length=77)["input_ids"]
    assert padded == CAT_IDS + [pad] * 70


def test_kinds_tokenize_text_identically():
    # ComfyUI drives every tower with one tokenizer; "!" must not become the pad id 0
    text = "Hello!! <b>wow</b> (x:1.2) naïve 東京 émoji 🐱"
    l_ids = load_tokenizer("clip_l")(text)["input_ids"]
    assert load_tokenizer("open_clip")(text)["input_ids"] == l_ids
    assert 0 not in l_ids


def test_load_tokenizer_is_cached_and_checked():
    assert load_tokenizer("clip_l") is load_tokenizer("clip_l")
    with pytest.raises(ValueError, match="'clip_g'"):
        load_tokenizer("clip_g")


def test_bytes_to_unicode_order():
    table = bt.bytes_to_unicode()
    chars = list(table.values())
    assert len(chars) == 256 == len(set(chars))
    assert chars[0] == "!" and table[ord(" ")] == chr(256 + 32)  # space is the 33rd unprintable


def _fake_bpe_text() -> str:
    # header + exactly the merges CLIP keeps + one more it must drop
    merges = [f"x{i} y" for i in range(bt.N_MERGES + 1)]
    return "\n".join(["#version: fake"] + merges) + "\n"


def test_build_from_gz_and_wheel(tmp_path):
    text = _fake_bpe_text()
    gz = tmp_path / bt.BPE_NAME
    gz.write_bytes(gzip.compress(text.encode()))
    whl = tmp_path / "open_clip_torch-0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as zf:
        zf.writestr("open_clip/__init__.py", "")
        zf.writestr(f"open_clip/{bt.BPE_NAME}", gz.read_bytes())
    assert bt.read_bpe_text(gz) == bt.read_bpe_text(whl) == text

    vocab, merges = bt.build_vocab_and_merges(text)
    assert len(vocab) == bt.VOCAB_SIZE and len(merges) == bt.N_MERGES
    assert vocab["!"] == 0 and vocab["!</w>"] == 256 and vocab["x0y"] == 512
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407

    out_a, out_b = tmp_path / "a", tmp_path / "b"
    bt.build(gz, out_a)
    bt.main([str(whl), "--out", str(out_b)])
    files = sorted(p.relative_to(out_a) for p in out_a.rglob("*") if p.is_file())
    assert len(files) == 8
    for rel in files:
        assert (out_a / rel).read_bytes() == (out_b / rel).read_bytes(), rel
    merges_txt = (out_a / "clip_l" / "merges.txt").read_text().splitlines()
    assert merges_txt[0] == "#version: 0.2" and len(merges_txt) == bt.N_MERGES + 1


def test_bad_sources(tmp_path):
    empty_zip = tmp_path / "x.whl"
    with zipfile.ZipFile(empty_zip, "w") as zf:
        zf.writestr("a.txt", "")
    with pytest.raises(ValueError, match="holds no"):
        bt.read_bpe_text(empty_zip)
    with pytest.raises(FileNotFoundError):
        bt.read_bpe_text(tmp_path / "nope.gz")
    with pytest.raises(ValueError, match="usable merge lines"):
        bt.build_vocab_and_merges("#version\na b\n")


def test_rebuild_matches_shipped(tmp_path):
    source = bt.find_bpe_source()
    if source is None:
        pytest.skip(
            "no open_clip BPE source here (set LORA_LAB_BPE_SOURCE to the open_clip_torch wheel "
            "or bpe_simple_vocab_16e6.txt.gz; `pip download --no-deps open-clip-torch` gets it)"
        )
    bt.build(source, tmp_path)
    for kind in ("clip_l", "open_clip"):
        for name in SHIPPED:
            rebuilt = (tmp_path / kind / name).read_bytes()
            shipped = (TOKENIZERS_DIR / kind / name).read_bytes()
            assert rebuilt == shipped, f"{kind}/{name} differs from a rebuild from {source}"
