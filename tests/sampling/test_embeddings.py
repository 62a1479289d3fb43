"""Textual-inversion embeddings: every file format, ComfyUI and A1111 prompt syntax, weights,
the encoders' vectors spliced in where the tokens were, and wrong-family errors."""
from __future__ import annotations

import logging

import pytest
import torch
from conftest import make_handle
from safetensors.torch import save_file

from lora_lab.nodes.io import paths
from lora_lab.nodes.io.errors import NodeInputError
from lora_lab.nodes.sampling.embeddings import (
    EmbeddingError,
    a1111_to_comfy,
    lookups_for,
    prompt_embedding_names,
    resolve_embedding,
)
from lora_lab.nodes.sampling.prompt import encode_prompt, load_tokenizer, tokenize_weighted

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def sd1():
    return make_handle("sd1", seed=31)


@pytest.fixture(scope="module")
def sdxl():
    return make_handle("sdxl", seed=32)


def _rows(handle, word: str, tower: int = 0) -> torch.Tensor:
    """The token-embedding rows of `word` in one encoder: an embedding equal to them must encode as the word."""
    ids = handle.tokenizers[tower](word)["input_ids"][1:-1]
    return handle.text_encoders[tower].get_input_embeddings().weight[ids].detach().clone()


@pytest.fixture
def emb_dir(tmp_path, sd1, sdxl):
    folder = tmp_path / "models" / "embeddings"
    (folder / "neg").mkdir(parents=True)
    # A1111 .pt: string_to_param (what A1111's textual-inversion training saves)
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": _rows(sd1, "black cat")},
                "name": "catpt", "step": 3000, "sd_checkpoint": "abc", "sd_checkpoint_name": "v1-5"},
               folder / "catpt.pt")
    save_file({"emb_params": _rows(sd1, "black cat")}, folder / "neg" / "catst.safetensors")  # A1111 safetensors
    save_file({"catdict": _rows(sd1, "black cat")}, folder / "catdict.safetensors")  # one named tensor
    save_file({"clip_l": _rows(sdxl, "black cat", 0), "clip_g": _rows(sdxl, "black cat", 1)},
              folder / "xlcat.safetensors")  # SDXL: one set per encoder
    save_file({"emb_params": torch.randn(2, 48)}, folder / "odd.safetensors")
    with paths.standalone_dirs(tmp_path / "models", tmp_path / "out"):
        yield folder


def _enc(h, text):
    return encode_prompt(h, a1111_to_comfy(text), lookups=lookups_for(h))


@pytest.mark.parametrize("name", ["catpt", "catst", "neg/catst", "catdict", "catpt.pt"])
def test_each_sd1_format_encodes_as_the_words_it_holds(emb_dir, sd1, name):
    want = encode_prompt(sd1, "a black cat on grass").cond
    got = _enc(sd1, f"a embedding:{name} on grass").cond
    assert torch.equal(got, want)


def test_sdxl_clip_l_and_clip_g(emb_dir, sdxl):
    want = encode_prompt(sdxl, "a black cat on grass")
    got = _enc(sdxl, "a embedding:xlcat on grass")
    assert torch.equal(got.cond, want.cond) and torch.equal(got.pooled, want.pooled)


def test_a1111_bare_names_equal_comfy_syntax(emb_dir, sd1):
    assert a1111_to_comfy("a catpt, (catst:1.2),catdict x") == \
        "a embedding:catpt, (embedding:catst:1.2), embedding:catdict x"
    assert a1111_to_comfy("embedding:catpt notcatpt catpt_v2 CatPt") == "embedding:catpt notcatpt catpt_v2 embedding:CatPt"
    a = _enc(sd1, "a catpt on grass").cond
    b = _enc(sd1, "a embedding:catpt on grass").cond
    assert torch.equal(a, b)


def test_weights_apply_to_the_embedding_as_to_its_words(emb_dir, sd1):
    want = encode_prompt(sd1, "a (black cat:1.3) on grass").cond
    got = _enc(sd1, "a (embedding:catpt:1.3) on grass").cond
    assert torch.allclose(got, want, atol=1e-6)
    assert not torch.allclose(got, _enc(sd1, "a embedding:catpt on grass").cond, atol=1e-4)


def test_tokens_hold_vectors_where_comfyui_puts_them(emb_dir, sd1):
    tok = load_tokenizer("clip_l")
    chunks = tokenize_weighted(tok, "a embedding:catpt, on", True, lookups_for(sd1)[0])
    row = chunks[0]
    assert row[1][0] == 320  # "a"
    assert isinstance(row[2][0], torch.Tensor) and isinstance(row[3][0], torch.Tensor)  # two vectors
    assert [t for t, _ in row[4:7]] == [267, 525, 49407]  # ",", "on", end: the comma tail kept as text


def test_missing_embedding_dropped_with_a_warning_as_comfyui(emb_dir, sd1, caplog):
    with caplog.at_level(logging.WARNING):
        got = _enc(sd1, "a embedding:nothing cat").cond
    assert torch.equal(got, encode_prompt(sd1, "a cat").cond)
    assert "embedding:nothing" in caplog.text


def test_wrong_family_is_a_named_error(emb_dir, sd1, sdxl):
    with pytest.raises(EmbeddingError, match=r"'catpt' is made for .*but the model is SDXL"):
        _enc(sdxl, "a embedding:catpt")
    with pytest.raises(EmbeddingError, match=r"'xlcat' is made for SDXL.*but the model is SD 1.x"):
        _enc(sd1, "a embedding:xlcat")
    with pytest.raises(EmbeddingError, match="48-wide"):
        _enc(sd1, "embedding:odd")


def test_sampler_names_node_input_and_value(emb_dir, sd1):
    from lora_lab.nodes.sampling.txt2img import SampleSettings, generate

    s = SampleSettings("a cat", "odd", 1, 1, 5.0, "euler", "normal", 64, 64)
    with pytest.raises(NodeInputError, match="negative_prompt") as e:
        generate(sd1, s)
    assert "LoraLabSampler" in str(e.value) and "odd" in str(e.value)


def test_names_and_lookup(emb_dir):
    assert prompt_embedding_names("x catpt, (embedding:neg/catst:1.1) embedding:catpt y embedding:no") == [
        "catpt", "neg/catst"]  # files only: a missing one is dropped, as in the encoder
    assert resolve_embedding("catst") == (emb_dir / "neg" / "catst.safetensors").resolve()


def test_unsafe_pickle_refused(emb_dir, sd1):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"string_to_param": {"*": Evil()}}, emb_dir / "evil.pt", pickle_protocol=pickle.DEFAULT_PROTOCOL)
    with pytest.raises(Exception, match="cannot be loaded safely"):
        _enc(sd1, "embedding:evil")


def _comfy_sd1_clip():
    from comfy_env import comfy_modules_or_skip

    return comfy_modules_or_skip("comfy.sd1_clip", needs="comfy/sd1_clip.py")[0]


@pytest.mark.parametrize("text", [
    "a embedding:catpt on grass", "(embedding:catst:1.3), x", "embedding:catdict, embedding:nothing y",
    "a embedding:catpt, on " + "word " * 70 + "embedding:catst end", "x\nembedding:catpt,tail z",
])
def test_tokens_match_comfyui(emb_dir, sd1, text):
    """ComfyUI's SDTokenizer with the same embeddings folder: the same ids, vectors and weights per place."""
    sd1_clip = _comfy_sd1_clip()
    theirs = sd1_clip.SDTokenizer(embedding_directory=str(emb_dir)).tokenize_with_weights(text)
    ours = tokenize_weighted(load_tokenizer("clip_l"), text, True, lookups_for(sd1)[0])
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert len(a) == len(b)
        for (ta, wa), (tb, wb, *_) in zip(a, b):
            assert wa == pytest.approx(wb)
            if isinstance(tb, torch.Tensor):
                assert isinstance(ta, torch.Tensor) and torch.equal(ta, tb.float())
            else:
                assert ta == tb


def test_core_clip_text_encode_reads_comfyui_syntax(emb_dir, sd1):
    from lora_lab.nodes.defs.core_conditioning import CLIPTextEncode
    from lora_lab.nodes.model.runner_types import ClipHandle

    (cond,) = CLIPTextEncode().encode(ClipHandle(sd1), "a embedding:catpt on grass")
    assert torch.equal(cond[0][0], encode_prompt(sd1, "a black cat on grass").cond.float().cpu())
    (bare,) = CLIPTextEncode().encode(ClipHandle(sd1), "a catpt on grass")  # ComfyUI: a bare name is text
    assert not torch.equal(bare[0][0], cond[0][0])
    with pytest.raises(NodeInputError, match="'text'.*made for SDXL"):
        CLIPTextEncode().encode(ClipHandle(sd1), "embedding:xlcat")


def test_embedding_info_and_trigger_words(emb_dir):
    import json

    from lora_lab.nodes.sampling.embeddings import embedding_info

    (emb_dir / "catpt.civitai.info").write_text(json.dumps({"trainedWords": ["catpt", "black cat"]}))
    info = embedding_info("catpt")
    assert info["family"] == "32-wide vectors" and info["vectors"] == 2 and info["width"] == 32
    assert info["training"] == {"name": "catpt", "step": 3000, "sd_checkpoint": "abc", "sd_checkpoint_name": "v1-5"}
    assert info["trigger_words"] == "catpt, black cat"
    assert embedding_info("xlcat")["family"] == "SDXL"
    json.dumps(info)


@pytest.mark.parametrize("name,status", [
    ("catpt", 200), ("neg/catst", 200), ("catst.safetensors", 200), ("xlcat", 200),
    ("../secret.pt", 400), ("/etc/passwd", 400), ("C:\\x.pt", 400), ("cat.txt", 400), ("", 400), (None, 400),
    ("nope", 404), ("broken.safetensors", 422), ("evil.pt", 422),
])
def test_embedding_info_route(emb_dir, name, status):
    """GET /lora_lab/embedding_info answers like the LoRA info route: 400 refused, 404 none, 422 unreadable."""
    import json
    import pickle

    from lora_lab.nodes.defs import server_routes

    (emb_dir / "broken.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not json")
    (emb_dir / "evil.pt").write_bytes(pickle.dumps(print))  # a global: refused by the weights-only unpickler
    code, body = server_routes.embedding_info_response(name)
    assert code == status, body
    if status == 200:
        assert body["vectors"] > 0 and body["trigger_words"] and json.dumps(body)
    else:
        assert body["error"]


def test_embedding_list_route(emb_dir):
    from lora_lab.nodes.defs import server_routes

    code, body = server_routes.embedding_list_response()
    assert code == 200 and body["names"] == ["catdict.safetensors", "catpt.pt", "neg/catst.safetensors",
                                             "odd.safetensors", "xlcat.safetensors"]


def test_embedding_routes_registered(monkeypatch, emb_dir):
    import asyncio

    web = pytest.importorskip("aiohttp.web")
    from aiohttp.test_utils import TestClient, TestServer
    from lora_lab.nodes.defs import server_routes

    ps = type("FakePromptServer", (), {})()
    ps.routes = web.RouteTableDef()
    monkeypatch.setattr(server_routes, "_registered", False)
    assert server_routes.register_routes(ps) is True

    async def go():
        app = web.Application()
        app.add_routes(ps.routes)
        async with TestClient(TestServer(app)) as client:
            r = await client.get("/lora_lab/embeddings")
            assert r.status == 200 and "catpt.pt" in (await r.json())["names"]
            r = await client.get("/lora_lab/embedding_info", params={"name": "catpt"})
            assert r.status == 200 and (await r.json())["vectors"] == 2
            for bad, status in (("../x.pt", 400), ("a\0b.pt", 400), ("x" * 5000, 400), ("nope", 404)):
                r = await client.get("/lora_lab/embedding_info", params={"name": bad})
                assert r.status == status, (bad[:20], await r.text())

    with paths.standalone_dirs(emb_dir.parent, emb_dir.parent.parent / "out"):  # seen in the executor thread
        asyncio.run(go())
