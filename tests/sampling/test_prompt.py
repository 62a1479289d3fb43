"""Prompt parsing, ComfyUI-style chunking and encode_prompt on tiny in-memory CLIP towers."""
from __future__ import annotations

import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from lora_lab.nodes.model.handle import ModelHandle
from lora_lab.nodes.sampling.prompt import (
    Conditioning,
    encode_prompt,
    load_tokenizer,
    parse_weights,
    tokenize_weighted,
)
from lora_lab.nodes.sampling.prompt_parse import segment_words

START, END = 49406, 49407
CAT, DOG, A = 2368, 1929, 320


# ------------------------------------------------------------------------ parse_weights
@pytest.mark.parametrize(
    "text, expected",
    [
        ("a cat", [("a cat", 1.0)]),
        ("a (cat) dog", [("a ", 1.0), ("cat", 1.1), (" dog", 1.0)]),
        ("((cat))", [("cat", 1.0 * 1.1 * 1.1)]),
        ("(((cat)))", [("cat", 1.0 * 1.1 * 1.1 * 1.1)]),
        ("(cat:1.3)", [("cat", 1.3)]),
        ("((cat:1.5))", [("cat", 1.5)]),  # explicit weight replaces the outer 1.1
        ("((cat):0.5)", [("cat", 0.5 * 1.1)]),
        ("(a (b:0.5) c:1.2)", [("a ", 1.2), ("b", 0.5), (" c", 1.2)]),
        ("(a (b:0.5) c)", [("a ", 1.1), ("b", 0.5), (" c", 1.1)]),
        ("(cat:1.2:3)", [("cat:1.2", 3.0)]),
        ("(a:b)", [("a:b", 1.1)]),  # not a number: emphasised text
        ("(:1.2)", [(":1.2", 1.1)]),  # a leading colon is text
        ("a () b", [("a ", 1.0), (" b", 1.0)]),
        (r"\(cat\)", [("(cat)", 1.0)]),
        (r"(\(cat\):1.2)", [("(cat)", 1.2)]),
        (r"a \(b (c) d\)", [("a (b ", 1.0), ("c", 1.1), (" d)", 1.0)]),
        ("a (cat", [("a ", 1.0), ("(cat", 1.0)]),  # unclosed: literal
        ("a cat) (dog)", [("a cat) (dog)", 1.0)]),  # stray ")" swallows until depth is back to 0
        ("", []),
    ],
)
def test_parse_weights(text, expected):
    assert parse_weights(text) == expected


def test_segment_words_drops_missing_embeddings():
    assert segment_words("a photo of a cat") == ["a photo of a cat"]
    assert segment_words("a embedding:foo cat") == ["a", "cat"]
    assert segment_words("embedding:foo") == []
    assert segment_words("x\nembedding:bar, y") == ["x", ", y"]  # comma tail kept as text


# --------------------------------------------------------------------- tokenize_weighted
def _ids(chunk):
    return [t for t, _ in chunk]


def test_cat_chunk_and_padding():
    tok = load_tokenizer("clip_l")
    (chunk,) = tokenize_weighted(tok, "a photo of a cat", pad_with_end=True)
    assert _ids(chunk) == [START, 320, 1125, 539, 320, CAT, END] + [END] * 70
    assert all(w == 1.0 for _, w in chunk)
    (chunk,) = tokenize_weighted(load_tokenizer("open_clip"), "a photo of a cat", pad_with_end=False)
    assert _ids(chunk) == [START, 320, 1125, 539, 320, CAT, END] + [0] * 70


def test_empty_prompt_is_one_chunk():
    (chunk,) = tokenize_weighted(load_tokenizer("clip_l"), "", pad_with_end=False)
    assert chunk == [(START, 1.0), (END, 1.0)] + [(0, 1.0)] * 75


def test_weights_and_whitespace():
    tok = load_tokenizer("clip_l")
    (chunk,) = tokenize_weighted(tok, "a\n(cat:1.5)  ((dog))", pad_with_end=True)
    assert chunk[:5] == [(START, 1.0), (A, 1.0), (CAT, 1.5), (DOG, 1.1 * 1.1), (END, 1.0)]


def test_long_prompt_splits_into_two_chunks():
    tok = load_tokenizer("clip_l")
    text = "a photo of a cat, " * 20  # one segment of 6 * 20 = 120 tokens (>= 8: splittable)
    piece = tok(text)["input_ids"][1:-1]
    assert len(piece) == 120
    c0, c1 = tokenize_weighted(tok, text, pad_with_end=True)
    assert len(c0) == len(c1) == 77
    assert _ids(c0) == [START] + piece[:75] + [END]
    assert _ids(c1) == [START] + piece[75:] + [END] + [END] * 30


def test_short_piece_moves_whole_to_next_chunk():
    tok = load_tokenizer("clip_l")
    c0, c1 = tokenize_weighted(tok, "cat " * 74 + "(a big dog:1.2)", pad_with_end=False)
    assert _ids(c0) == [START] + [CAT] * 74 + [END, 0]  # 3 tokens do not fit in the 1 left
    assert c1[:5] == [(START, 1.0), (A, 1.2), (1205, 1.2), (DOG, 1.2), (END, 1.0)]
    assert _ids(c1)[5:] == [0] * 72


def test_long_piece_is_split_at_the_boundary():
    tok = load_tokenizer("clip_l")
    c0, c1 = tokenize_weighted(tok, "cat " * 74 + "(" + "dog " * 10 + ":1.2)", pad_with_end=False)
    assert c0[-3:] == [(CAT, 1.0), (DOG, 1.2), (END, 1.0)]
    assert c1[:11] == [(START, 1.0)] + [(DOG, 1.2)] * 9 + [(END, 1.0)]


# --------------------------------------------------------------------------- encoding
def _config(**kw):
    return CLIPTextConfig(
        vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=2, max_position_embeddings=77, **kw,
    )


@pytest.fixture(scope="module")
def towers():
    torch.manual_seed(0)
    clip_l = CLIPTextModel(_config()).eval()
    clip_h = CLIPTextModel(_config(hidden_act="gelu")).eval()
    big_g = CLIPTextModelWithProjection(_config(hidden_act="gelu", projection_dim=32)).eval()
    return clip_l, clip_h, big_g


def _handle(family, encoders):
    kinds = {"sd1": ("clip_l",), "sd2": ("open_clip",), "sdxl": ("clip_l", "open_clip")}[family]
    return ModelHandle(family, "epsilon", None, None, tuple(encoders), tuple(load_tokenizer(k) for k in kinds))


def _ids_tensor(text, kind):
    chunks = tokenize_weighted(load_tokenizer(kind), text, pad_with_end=(kind == "clip_l"))
    return torch.tensor([_ids(c) for c in chunks])


def _hidden(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, output_hidden_states=True)


def test_sd1_shapes_and_clip_skip(towers):
    clip_l = towers[0]
    h = _handle("sd1", [clip_l])
    text = "a photo of a cat"
    c = encode_prompt(h, text)
    assert c.cond.shape == (1, 77, 32) and c.cond.dtype == torch.float32 and c.pooled is None
    assert not c.cond.requires_grad
    out = _hidden(clip_l, _ids_tensor(text, "clip_l"))
    torch.testing.assert_close(c.cond, out.last_hidden_state, rtol=0, atol=1e-6)  # skip 1 = last, LN'd
    c2 = encode_prompt(h, text, clip_skip=2)
    torch.testing.assert_close(c2.cond, clip_l.final_layer_norm(out.hidden_states[-2]), rtol=0, atol=1e-6)
    assert not torch.allclose(c.cond, c2.cond)
    long = encode_prompt(h, "a photo of a cat, " * 20)
    assert long.cond.shape == (1, 154, 32)


def test_clip_skip_checks(towers):
    h = _handle("sd1", [towers[0]])
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="clip_skip"):
            encode_prompt(h, "cat", clip_skip=bad)
    # deeper than the 3 layers: ComfyUI falls back to the last (layer-normed) output
    torch.testing.assert_close(encode_prompt(h, "cat", clip_skip=9).cond, encode_prompt(h, "cat", 1).cond)


def test_sd2_default_is_penultimate_with_layer_norm(towers):
    clip_h = towers[1]
    h = _handle("sd2", [clip_h])
    c = encode_prompt(h, "a cat!")
    torch.testing.assert_close(c.cond, encode_prompt(h, "a cat!", clip_skip=2).cond, rtol=0, atol=0)
    out = _hidden(clip_h, _ids_tensor("a cat!", "open_clip"))
    torch.testing.assert_close(c.cond, clip_h.final_layer_norm(out.hidden_states[-2]), rtol=0, atol=1e-6)
    assert not torch.allclose(c.cond, encode_prompt(h, "a cat!", clip_skip=1).cond)


def test_sdxl_concat_and_pooled(towers):
    clip_l, _, big_g = towers
    h = _handle("sdxl", [clip_l, big_g])
    text = "a photo of a cat, " * 20
    c = encode_prompt(h, text)
    assert c.cond.shape == (1, 154, 64) and c.pooled.shape == (1, 32)
    l_ids, g_ids = _ids_tensor(text, "clip_l"), _ids_tensor(text, "open_clip")
    assert (l_ids[1] == END).sum() == 31 and (g_ids[1] == 0).sum() == 30  # the pads differ
    out_l, out_g = _hidden(clip_l, l_ids), _hidden(big_g, g_ids)
    # penultimate, no final layer norm, chunks along the token axis
    want_l = out_l.hidden_states[-2].reshape(1, 154, 32)
    want_g = out_g.hidden_states[-2].reshape(1, 154, 32)
    torch.testing.assert_close(c.cond, torch.cat([want_l, want_g], dim=-1), rtol=0, atol=1e-6)
    torch.testing.assert_close(c.pooled, out_g.text_embeds[0:1], rtol=0, atol=1e-6)
    c1 = encode_prompt(h, text, clip_skip=1)  # last layer, still without the final LN
    torch.testing.assert_close(c1.cond[..., 32:], out_g.hidden_states[-1].reshape(1, 154, 32), rtol=0, atol=1e-6)
    torch.testing.assert_close(c1.pooled, c.pooled)  # pooled does not follow clip_skip


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_weight_one_equals_unweighted(towers, family):
    encs = [towers[0]] if family == "sd1" else [towers[0], towers[2]]
    h = _handle(family, encs)
    a = encode_prompt(h, "a photo of a (cat:1.0)")
    b = encode_prompt(h, "a photo of a cat")
    assert torch.equal(a.cond, b.cond)
    if family == "sdxl":
        assert torch.equal(a.pooled, b.pooled)


def test_weighted_token_formula(towers):
    clip_l = towers[0]
    h = _handle("sd1", [clip_l])
    c = encode_prompt(h, "a photo of a (cat:1.5)")
    ids = _ids_tensor("a photo of a cat", "clip_l")
    empty = torch.tensor([[START, END] + [END] * 75])
    out = _hidden(clip_l, torch.cat([ids, empty]))  # the prompt and the empty chunk, one batch
    z, z_empty = out.last_hidden_state[0], out.last_hidden_state[1]
    j = ids[0].tolist().index(CAT)
    want = z.clone()
    want[j] = (z[j] - z_empty[j]) * 1.5 + z_empty[j]
    torch.testing.assert_close(c.cond[0], want, rtol=0, atol=1e-6)
    assert torch.equal(c.cond[0, :j], z[:j])  # weight 1 tokens untouched


def test_sdxl_weighted_pooled_is_unweighted_first_chunk(towers):
    clip_l, _, big_g = towers
    h = _handle("sdxl", [clip_l, big_g])
    c = encode_prompt(h, "a photo of a (cat:1.3)")
    out_g = _hidden(big_g, _ids_tensor("a photo of a cat", "open_clip"))
    torch.testing.assert_close(c.pooled, out_g.text_embeds[0:1], rtol=0, atol=1e-6)


def test_conditioning_validates():
    Conditioning(torch.zeros(1, 154, 8), torch.zeros(1, 4))
    with pytest.raises(ValueError, match="cond"):
        Conditioning(torch.zeros(1, 70, 8))
    with pytest.raises(ValueError, match="pooled"):
        Conditioning(torch.zeros(1, 77, 8), torch.zeros(4))
