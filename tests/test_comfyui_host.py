"""The pack inside a real ComfyUI (CPU mode): it loads, its nodes are in /object_info, its
routes answer, its js is served, and every workflow in workflows/ runs through /prompt.

Runs only when COMFYUI_DIR points at a ComfyUI checkout; its Python is COMFYUI_PYTHON, else
COMFYUI_DIR/.venv/bin/python, else this one (it needs ComfyUI's requirements and this pack's
dependencies). The server runs on 127.0.0.1 on a free port with a temporary base directory
(custom_nodes/ with a link to this repository, models/, output/, user/), so nothing of the
ComfyUI checkout changes.

    COMFYUI_DIR=/path/to/ComfyUI python -m pytest tests/test_comfyui_host.py

With LORA_LAB_FRONTEND_ROOT (the `static` folder of a newer comfyui-frontend-package, e.g.
1.58.1) the editor check also runs on that frontend.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = (sorted((ROOT / "workflows").glob("*.json")) + sorted((ROOT / "workflows" / "comfyui").glob("*.json")))
COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
DEMO_DATASET = "lora-lab-demo-dataset"  # lora_lab.nodes.demo.demo_lora.DEMO_DATASET

pytestmark = pytest.mark.skipif(not COMFYUI_DIR, reason="set COMFYUI_DIR to a ComfyUI checkout to run these")


def comfy_python(comfy_dir: Path) -> str:
    if os.environ.get("COMFYUI_PYTHON"):
        return os.environ["COMFYUI_PYTHON"]
    venv = comfy_dir / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """A ComfyUI process on 127.0.0.1 with a temporary base directory holding this pack."""

    def __init__(self, comfy_dir: str | Path, base: Path, start_timeout: float = 180, extra_args=()):
        self.comfy_dir, self.base = Path(comfy_dir), Path(base)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (self.base / "custom_nodes").mkdir(parents=True, exist_ok=True)
        link = self.base / "custom_nodes" / "lora-lab"
        if not link.exists():
            link.symlink_to(ROOT, target_is_directory=True)
        for sub in ("models/checkpoints", "models/loras", "output", "input", "user", "temp"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        self.log_path = self.base / "comfyui.log"
        cmd = [comfy_python(self.comfy_dir), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--base-directory", str(self.base), "--database-url", "sqlite:///:memory:", "--disable-auto-launch", *extra_args]
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (open while the server runs; closed in stop())
        self.proc = subprocess.Popen(cmd, cwd=self.comfy_dir, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + start_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited ({self.proc.returncode}):\n{self.log_tail()}")
            try:
                self.get("/system_stats", timeout=2)
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"ComfyUI did not answer in {start_timeout} s:\n{self.log_tail()}") from None
                time.sleep(0.5)

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def request(self, path: str, data=None, timeout: float = 30):
        body = json.dumps(data).encode() if data is not None else None
        req = urllib.request.Request(self.url + path, data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()

    def get(self, path: str, timeout: float = 30):
        return json.loads(self.request(path, timeout=timeout)[2])

    def queue(self, prompt: dict, workflow: dict | None = None) -> str:
        extra = {"extra_pnginfo": {"workflow": workflow}} if workflow is not None else {}
        body = {"prompt": prompt, "client_id": uuid.uuid4().hex, "extra_data": extra}
        try:
            return json.loads(self.request("/prompt", body)[2])["prompt_id"]
        except urllib.error.HTTPError as e:
            raise AssertionError(f"/prompt refused the graph: {e.read().decode(errors='replace')[:3000]}") from None

    def wait(self, prompt_id: str, timeout: float = 300) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hist = self.get(f"/history/{prompt_id}")
            entry = hist.get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None and (
                    entry["status"].get("completed") or entry["status"].get("status_str") == "error"):
                return entry
            if self.proc.poll() is not None:
                raise AssertionError(f"ComfyUI died:\n{self.log_tail()}")
            time.sleep(0.3)
        raise AssertionError(f"prompt {prompt_id} did not finish in {timeout} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


COMFY_CKPT = "v1-5-pruned-emaonly-fp16.safetensors"  # what the ComfyUI-only workflows name
COMFY_LORA = "lora-lab-example-sd15.safetensors"


def prepare_models(base: Path) -> None:
    """The demo LoRAs in the loras folder and the demo dataset in input/ (the demo checkpoint is
    written by the pack on first use); for the ComfyUI-only workflows, a small checkpoint that
    ComfyUI's own loader reads as SD 1.5 (tests/defs/comfy_models.py) under the name they use,
    and a kohya LoRA for it; an A1111 embedding (EasyNegative) for the editor check."""
    from lora_lab.nodes.demo import demo_lora

    demo_lora.ensure_demo_loras(base / "models" / "loras")
    demo_lora.ensure_demo_dataset(base / "input" / DEMO_DATASET)
    sys.path.insert(0, str(ROOT / "tests" / "defs"))
    sys.path.insert(0, str(ROOT / "tests"))
    from comfy_models import small_sd15_handle
    from lora_factory import kohya
    from safetensors.torch import save_file

    from lora_lab.nodes.model import checkpoint_save

    handle = small_sd15_handle(seed=1)
    checkpoint_save.save_single_file(base / "models" / "checkpoints" / COMFY_CKPT, handle, dtype=torch.float16)
    save_file(kohya(handle, rank=4, seed=2), base / "models" / "loras" / COMFY_LORA)
    from lora_lab.nodes.demo.demo_image import ensure_demo_image

    ensure_demo_image(base / "input")  # LoadImage (ComfyUI's own) lists its input folder
    from editor_check import write_embedding

    write_embedding(base / "models" / "embeddings" / "EasyNegative.safetensors")  # the editor check's Sample panel


def object_info_registry(info: dict) -> dict:
    """Node classes for the UI -> API conversion of ComfyUI's nodes: their inputs as /object_info
    states them (our own classes are used for ours)."""
    return {name: type(name, (), {"INPUT_TYPES": classmethod(lambda cls, spec=node["input"]: spec)})
            for name, node in info.items()}


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy_base")
    prepare_models(base)
    server = ComfyServer(COMFYUI_DIR, base)
    yield server
    server.stop()


def test_nodes_in_object_info(comfy):
    from lora_lab.nodes.defs.node_defs import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

    from lora_lab.nodes.defs import comfy_bridge, comfy_lora_nodes

    info = comfy.get("/object_info")
    names = {**NODE_DISPLAY_NAME_MAPPINGS, **comfy_lora_nodes.NODE_DISPLAY_NAME_MAPPINGS,
             **comfy_bridge.NODE_DISPLAY_NAME_MAPPINGS}  # the MODEL/CLIP nodes: registered inside ComfyUI
    for node_id in {**NODE_CLASS_MAPPINGS, **comfy_lora_nodes.NODE_CLASS_MAPPINGS, **comfy_bridge.NODE_CLASS_MAPPINGS}:
        assert node_id in info, f"{node_id} not in /object_info:\n{comfy.log_tail()}"
        assert info[node_id]["display_name"] == names[node_id]
        assert info[node_id]["category"].startswith("LoRA Lab")
    assert info["LoraLabLoraStackModelClip"]["output"] == ["MODEL", "CLIP", "LORA_STACK", "STRING"]
    assert "lora-lab-demo-style.safetensors" in info["LoraLabStrengthSweep"]["input"]["required"]["lora_name"][0]


def test_routes_and_js_are_served(comfy):
    names = comfy.get("/lora_lab/loras")["names"]
    assert "lora-lab-demo-style.safetensors" in names
    from lora_lab.nodes.demo.demo_lora import STYLE_TRIGGER

    info = comfy.get("/api/lora_lab/info?name=" + urllib.parse.quote("lora-lab-demo-style.safetensors"))
    assert info["trigger_words"] == STYLE_TRIGGER and info["family"] == "sd1"  # the shipped demo LoRA's trigger
    with pytest.raises(urllib.error.HTTPError) as e:
        comfy.get("/lora_lab/info?name=" + urllib.parse.quote("../../../etc/passwd"))
    assert e.value.code == 400
    exts = comfy.get("/extensions")
    assert "/extensions/lora-lab/lora_lab.js" in exts
    assert not [x for x in exts if "lora-lab" in x and not x.endswith("lora_lab.js")]  # only the entry is loaded
    for path in ("/extensions/lora-lab/lora_lab.js", "/extensions/lora-lab/lib/stack_text.mjs",
                 "/extensions/lora-lab/ui/stack_editor.mjs"):
        status, ctype, body = comfy.request(path)
        assert status == 200 and "javascript" in ctype and body, (path, ctype)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_runs_through_prompt_api(comfy, path):
    from lora_lab.nodes.defs.runner_registry import RUNNER_CLASS_MAPPINGS as REGISTRY
    from lora_lab.nodes.defs.runner_registry import RUNNER_DISPLAY_NAME_MAPPINGS as NAMES
    from lora_lab.nodes.graph.workflow import load_workflow

    ui = json.loads(path.read_text())
    if any(n["type"] == "CheckpointLoaderSimple" and "lora-lab-demo" in json.dumps(n.get("widgets_values"))
           for n in ui["nodes"]):
        pytest.skip("ComfyUI's own loader cannot load the tiny demo checkpoint (its model detection knows the "
                    "full-size layouts only); tests/test_comfy_graph_parity.py runs these graphs on a full-size one")
    registry = {**object_info_registry(comfy.get("/object_info")), **REGISTRY}  # ComfyUI's nodes, and ours
    prompt = load_workflow(path, registry, NAMES).prompt
    for node in prompt.values():  # Train LoRA on the demo dataset: its folder in this server's input/
        if node["class_type"] == "LoraLabTrainLora" and node["inputs"].get("dataset_dir") == DEMO_DATASET:
            node["inputs"]["dataset_dir"] = str(comfy.base / "input" / DEMO_DATASET)
    entry = comfy.wait(comfy.queue(prompt, ui))
    status = entry["status"]
    assert status.get("status_str") == "success", json.dumps(status.get("messages"), indent=1)[:4000]
    saved = [item for out in entry["outputs"].values() for items in out.values() if isinstance(items, list)
             for item in items if isinstance(item, dict) and "filename" in item]  # images, files, ...
    assert saved, entry["outputs"]
    for item in saved:
        f = comfy.base / "output" / item.get("subfolder", "") / item["filename"]
        assert f.is_file() and f.stat().st_size > 0


def run_editor_check(url: str) -> None:
    cmd = [comfy_python(Path(COMFYUI_DIR)), str(Path(__file__).with_name("editor_check.py")), "--url", url, "--json"]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]


@pytest.mark.skipif(not shutil.which("chromium"), reason="the editor check needs Chromium (apt-get install chromium)")
def test_editor_loads_workflows(comfy):
    """Headless Chromium opens the editor (the frontend this ComfyUI pins) and loads every
    workflow (tests/editor_check.py)."""
    run_editor_check(comfy.url)


FRONTEND_ROOT = os.environ.get("LORA_LAB_FRONTEND_ROOT")


@pytest.mark.skipif(not shutil.which("chromium"), reason="the editor check needs Chromium (apt-get install chromium)")
@pytest.mark.skipif(not FRONTEND_ROOT, reason="set LORA_LAB_FRONTEND_ROOT to a newer frontend's static folder "
                    "(comfyui-frontend-package, e.g. 1.58.1) to check the editor on it too")
def test_editor_loads_workflows_on_the_current_frontend(tmp_path_factory):
    """The same check on the frontend in LORA_LAB_FRONTEND_ROOT, served with --front-end-root."""
    base = tmp_path_factory.mktemp("comfy_base_frontend")
    prepare_models(base)
    server = ComfyServer(COMFYUI_DIR, base, extra_args=("--front-end-root", FRONTEND_ROOT))
    try:
        run_editor_check(server.url)
    finally:
        server.stop()
