"""LoRA info for the editor (trigger words, family, rank/alpha, tags, sidecars), the names it
refuses, the server-route wrappers and the Train LoRA progress event — all without ComfyUI."""
from __future__ import annotations

import asyncio
import json
import math
import sys
import types
from pathlib import Path

import pytest
import torch
from conftest import make_handle
from lora_factory import kohya
from safetensors.torch import load_file, save_file

from lora_lab.nodes.demo import demo_lora
from lora_lab.nodes.lora import lora_info
from lora_lab.nodes.io import paths
from lora_lab.nodes.defs import server_routes
from lora_lab.nodes.lora.lora_formats import read_lora


@pytest.fixture(scope="module")
def h():
    return make_handle("sd1", seed=41)


@pytest.fixture
def loras(tmp_path, h):
    folder = tmp_path / "models" / "loras"
    (folder / "style").mkdir(parents=True)
    meta = {"ss_tag_frequency": json.dumps({"10_cat": {"mycat": 9, "sitting": 3}, "2_more": {"sitting": 8, " ": 1}}),
            "ss_network_dim": "4", "ss_base_model_version": "sd_v1", "ss_output_name": "cat", "ss_num_epochs": "10"}
    save_file(kohya(h, rank=4, alpha=2.0, seed=1), folder / "cat.safetensors", metadata=meta)
    save_file(kohya(h, rank=2, alpha=None, seed=2, with_te=False), folder / "style" / "ink.safetensors",
              metadata={"ss_network_alpha": "1.5"})
    (folder / "style" / "ink.txt").write_text("ink drawing")
    (folder / "style" / "ink.json").write_text(json.dumps({"activation text": "inkstyle", "preferred weight": 0.8,
                                                           "notes": "works best at 0.6-0.9", "junk": 1}))
    (folder / "style" / "ink.civitai.info").write_text(json.dumps({"trainedWords": ["inkstyle", "sumi-e"]}))
    (folder / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    save_file({"some.weight": torch.zeros(2, 2), "other": torch.zeros(1)}, folder / "notalora.safetensors")
    outside = tmp_path / "secret.safetensors"
    save_file(kohya(h, seed=3), outside)
    (folder / "escape.safetensors").symlink_to(outside)
    with paths.standalone_dirs(tmp_path / "models", tmp_path / "out"):
        yield folder


def test_describe_kohya(loras):
    info = lora_info.lora_info("cat.safetensors")
    assert info["name"] == "cat.safetensors" and info["family"] == "sd1" and info["family_label"] == "SD 1.x"
    assert info["rank"] == 4 and info["alpha"] == 2.0  # most UNet layers; the text layers have alpha 4
    assert info["alphas"] == [2.0, 4.0] and info["kinds"] == {"lora": info["layers"]["unet"] + info["layers"]["text"]}
    assert info["layers"]["unet"] > 0 and info["layers"]["text"] > 0
    assert info["tags"][:2] == [{"tag": "sitting", "count": 11}, {"tag": "mycat", "count": 9}]
    assert info["tag_total"] == 2
    assert info["trigger_words"] == "sitting, mycat"  # the same words the Load LoRA node outputs
    assert info["training"] == {"ss_output_name": "cat", "ss_num_epochs": "10"}
    json.dumps(info)  # JSON-safe


def test_describe_sidecars_and_subfolders(loras):
    info = lora_info.lora_info("style/ink.safetensors")
    assert info["rank"] == 2 and info["alpha"] == 1.5  # no alpha tensors: the metadata's value
    assert info["layers"]["text"] == 0
    assert info["trigger_words"] == "inkstyle, ink drawing, sumi-e"  # civitai trainedWords join, deduplicated
    side = info["sidecars"]
    assert side["json"] == {"activation text": "inkstyle", "preferred weight": 0.8, "notes": "works best at 0.6-0.9"}
    assert side["txt"] == "ink drawing" and side["trained_words"] == ["inkstyle", "sumi-e"]
    assert lora_info.lora_info("style/ink")["name"] == "style/ink"  # extension optional, as in the nodes


@pytest.mark.parametrize("name,status", [
    ("../secret.safetensors", 400), ("/etc/passwd", 400), ("C:\\x.safetensors", 400), ("escape.safetensors", 400),
    ("cat.txt", 400), ("", 400), ("nope.safetensors", 404), ("broken.safetensors", 422), ("notalora.safetensors", 422),
])
def test_refused_names(loras, name, status):
    code, body = server_routes.info_response(name)
    assert code == status and body["error"], body


def test_family_guesses():
    assert lora_info.family_from_shapes({"lora_te2_text_model_x.lora_down.weight": (4, 64)}) == "sdxl"
    key = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight"
    assert lora_info.family_from_shapes({key: (8, 768)}) == "sd1"
    assert lora_info.family_from_shapes({key.replace("lora_unet_", "unet.").replace(".lora_down.weight", "") .replace(
        "_attn2_to_k", ".attn2.to_k") + ".lora_A.weight": (8, 1024)}) == "sd2"
    assert lora_info.family_from_metadata({"modelspec.architecture": "stable-diffusion-xl-v1-base/lora"}) == "sdxl"
    assert lora_info.family_from_metadata({"ss_base_model_version": "sd_v2_768_v"}) == "sd2"
    assert lora_info.family_from_metadata({}) is None


def test_list_has_folders_and_demo_names(loras):
    assert not set(demo_lora.DEMO_LORA_NAMES) & set(lora_info.lora_list()["names"])  # core knows no demo
    listing = lora_info.lora_list(demo_lora.DEMO_LORA_NAMES)
    assert "cat.safetensors" in listing["names"] and "style/ink.safetensors" in listing["names"]
    assert listing["folders"] == ["style"]
    assert set(demo_lora.DEMO_LORA_NAMES) <= set(listing["names"])  # written on first use
    assert server_routes.list_response() == (200, listing)  # the route (the edge) adds them


def test_demo_loras_are_deterministic_and_load(tmp_path):
    a = demo_lora.ensure_demo_lora(demo_lora.DEMO_STYLE, tmp_path / "a")
    b = demo_lora.ensure_demo_lora(demo_lora.DEMO_STYLE, tmp_path / "b")
    # same tensors and metadata (safetensors writes its metadata map in no fixed order)
    ta, tb = load_file(a), load_file(b)
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    assert read_lora(a).metadata == read_lora(b).metadata
    raw = read_lora(a)
    assert not raw.unknown_keys and len(raw.adapters) > 50
    info = lora_info.describe_lora(a)
    assert (info["family"], info["rank"], info["alpha"]) == ("sd1", 4, 4.0)
    assert info["trigger_words"] == "llstripes"
    with pytest.raises(ValueError, match="not a demo LoRA"):
        demo_lora.ensure_demo_lora("other.safetensors", tmp_path)


def test_demo_lora_info_writes_it_on_first_use(tmp_path):
    with paths.standalone_dirs(tmp_path / "models", tmp_path / "out"):
        code, info = server_routes.info_response(demo_lora.DEMO_CHARACTER)
    assert code == 200 and info["rank"] == 8 and (tmp_path / "models" / "loras" / demo_lora.DEMO_CHARACTER).is_file()


# ------------------------------------------------------------------------------ ComfyUI glue
class FakePromptServer:
    def __init__(self, routes=None):
        self.sent = []
        self.client_id = "client-1"
        self.routes = routes

    def send_sync(self, event, data, sid=None):
        self.sent.append((event, data, sid))


def _fake_server_module(monkeypatch, ps):
    mod = types.ModuleType("server")
    mod.PromptServer = type("PromptServer", (), {"instance": ps})
    monkeypatch.setitem(sys.modules, "server", mod)


def test_train_progress_is_a_noop_outside_comfyui(monkeypatch):
    monkeypatch.delitem(sys.modules, "server", raising=False)
    assert server_routes.report_train_progress("5", 1, 10, 0.5, 3.0) is False


def test_train_progress_event(monkeypatch):
    ps = FakePromptServer()
    _fake_server_module(monkeypatch, ps)
    assert server_routes.report_train_progress(5, 3, 10, 0.25, 12.5)
    assert server_routes.report_train_progress("5", 10, 10, math.nan, None)
    assert ps.sent == [
        ("lora_lab.train_progress", {"node": "5", "step": 3, "total": 10, "loss": 0.25, "eta": 12.5}, "client-1"),
        ("lora_lab.train_progress", {"node": "5", "step": 10, "total": 10, "loss": None, "eta": None}, "client-1"),
    ]


def test_routes(monkeypatch, loras):
    web = pytest.importorskip("aiohttp.web")
    from aiohttp.test_utils import TestClient, TestServer

    ps = FakePromptServer(web.RouteTableDef())
    monkeypatch.setattr(server_routes, "_registered", False)
    assert server_routes.register_routes(ps) is True
    assert server_routes.register_routes(ps) is False  # once

    async def go():
        app = web.Application()
        app.add_routes(ps.routes)
        async with TestClient(TestServer(app)) as client:
            r = await client.get("/lora_lab/loras")
            assert r.status == 200 and "cat.safetensors" in (await r.json())["names"]
            r = await client.get("/lora_lab/info", params={"name": "cat.safetensors"})
            assert r.status == 200 and (await r.json())["rank"] == 4
            r = await client.get("/lora_lab/info", params={"name": "../secret.safetensors"})
            assert r.status == 400
            r = await client.get("/lora_lab/info")
            assert r.status == 400

    # the routes run in an executor thread: the standalone_dirs context must be visible there
    with paths.standalone_dirs(loras.parent, loras.parent.parent / "out"):
        asyncio.run(go())


def test_symlinked_sidecars_out_of_the_folder_are_refused(monkeypatch, loras, h):
    """A LoRA inside the folder whose .txt / .json / .civitai.info sidecars are links to files
    outside: the route (and the node's trigger words) never return those files' contents."""
    web = pytest.importorskip("aiohttp.web")
    from aiohttp.test_utils import TestClient, TestServer
    from lora_lab.nodes.defs.node_defs import LoraLabLoraLoader

    secret = loras.parent.parent / "secret.txt"
    secret.write_text("TOP-SECRET password=hunter2")
    secret_json = loras.parent.parent / "secret.json"
    secret_json.write_text(json.dumps({"activation text": "TOP-SECRET json", "notes": "TOP-SECRET"}))
    save_file(kohya(h, rank=2, seed=9), loras / "leaky.safetensors")
    (loras / "leaky.txt").symlink_to(secret)
    (loras / "leaky.json").symlink_to(secret_json)
    (loras / "leaky.civitai.info").symlink_to(secret_json)
    (loras / "inner.txt").write_text("a note inside the folder")
    save_file(kohya(h, rank=2, seed=10), loras / "linked.safetensors")
    (loras / "linked.txt").symlink_to(loras / "inner.txt")  # a link that stays inside is fine

    code, body = server_routes.info_response("leaky.safetensors")
    assert code == 200 and "TOP-SECRET" not in json.dumps(body)
    assert sorted(body["sidecars"]["refused"]) == ["leaky.civitai.info", "leaky.json", "leaky.txt"]
    code, body = server_routes.info_response("linked.safetensors")
    assert code == 200 and body["sidecars"]["txt"] == "a note inside the folder"
    _, words = LoraLabLoraLoader().load(h, "leaky.safetensors", 1.0, 1.0)
    assert "TOP-SECRET" not in words

    ps = FakePromptServer(web.RouteTableDef())
    monkeypatch.setattr(server_routes, "_registered", False)
    server_routes.register_routes(ps)

    async def go():
        app = web.Application()
        app.add_routes(ps.routes)
        async with TestClient(TestServer(app)) as client:
            r = await client.get("/lora_lab/info", params={"name": "leaky.safetensors"})
            assert r.status == 200 and "TOP-SECRET" not in await r.text()
            for bad in ("a\0b.safetensors", "x" * 5000 + ".safetensors", "x" * 5000, "\udcff.safetensors"):
                r = await client.get("/lora_lab/info", params={"name": bad})
                assert 400 <= r.status < 500 and (await r.json())["error"], (bad[:20], r.status)

    with paths.standalone_dirs(loras.parent, loras.parent.parent / "out"):
        asyncio.run(go())


# ------------------------------------------------------------------------------ editor ↔ Python
def test_stack_text_cases_shared_with_the_js_editor():
    """js/tests/stack_cases.json: the rows editor (js/lib/stack_text.mjs) must read the Stack
    LoRAs text exactly as the node does; node --test runs the same cases through the js."""
    from lora_lab.nodes.io.errors import NodeInputError
    from lora_lab.nodes.lora.lora_stack import parse_stack_text

    cases = json.loads((Path(__file__).resolve().parents[2] / "js" / "tests" / "stack_cases.json").read_text())
    assert len(cases) >= 5
    for case in cases:
        if case.get("error"):
            with pytest.raises(NodeInputError):
                parse_stack_text(case["text"])
            continue
        got = [[e.name, e.strength_unet, e.strength_text] for e in parse_stack_text(case["text"])]
        assert got == case["entries"], case["text"]
