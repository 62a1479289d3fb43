"""Open ComfyUI's editor in headless Chromium and load every workflow in workflows/ through the
frontend's own `app.loadGraphData`, collecting console errors and uncaught exceptions.

For each workflow it also checks, in the page: every node type is known to the frontend; the
graph the frontend queues (`app.graphToPrompt`) equals the headless runner's UI→API
conversion; our widgets add nothing to what is saved; the Stack LoRAs rows mirror its text
(and a click on a row's switch rewrites the text); a LoRA file the machine lacks is marked on
the node; Sample's embedding panel shows an embedding's info and marks a missing one; a Train LoRA progress event shows step, loss and ETA on the node.

    python tests/editor_check.py --url http://127.0.0.1:8188      # a running ComfyUI with the pack
    python tests/editor_check.py --comfy-dir /path/to/ComfyUI      # start one (as the host test does)

Needs Chromium (/usr/bin/chromium) and aiohttp (ComfyUI's Python has it). Talks to Chromium
over the DevTools protocol; nothing leaves 127.0.0.1. Exit code 0 when everything passed.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--remote-debugging-port=0", "--window-size=1600,1000"]

# Runs in the page: loads each workflow with the frontend's own loader and inspects the result.
PAGE_FN = r"""
async (workflows) => {
  const app = window.comfyAPI.app.app;
  const api = window.comfyAPI.api.api;
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const widget = (n, name) => (n.widgets || []).find((w) => w.name === name);
  const byClass = (c) => app.graph.nodes.filter((n) => n.comfyClass === c);
  const warnOf = (n) => widget(n, "lora_lab_panel")?.element.querySelector(".lora-lab-warn")?.textContent ?? null;
  const until = async (fn, ms = 5000) => {
    for (let t = 0; t < ms; t += 100) { const v = fn(); if (v) return v; await sleep(100); }
    return fn();
  };
  const load = async (wf, name) => { await app.loadGraphData(structuredClone(wf), true, true, name); await sleep(400); };
  const report = { workflows: {}, problems: [], checks: {} };

  for (const [name, wf] of Object.entries(workflows)) {
    const res = { problems: [] };
    report.workflows[name] = res;
    try {
      await load(wf, name);
      const nodes = app.graph.nodes;
      res.nodes = nodes.length;
      if (nodes.length !== wf.nodes.length) res.problems.push(`${nodes.length} of ${wf.nodes.length} nodes loaded`);
      for (const n of nodes) {
        if (!window.LiteGraph.registered_node_types[n.type]) res.problems.push(`unknown node type ${n.type}`);
      }
      const saved = app.graph.serialize();
      const values = (v) => JSON.stringify(v ?? []);  // frontend 1.5x leaves out an empty list
      for (const orig of wf.nodes) {
        const now = saved.nodes.find((n) => n.id === orig.id);
        if (values(now?.widgets_values) !== values(orig.widgets_values)) {
          res.problems.push(`node ${orig.id} saves ${JSON.stringify(now?.widgets_values)}, `
            + `the file has ${JSON.stringify(orig.widgets_values)}`);
        }
      }
      res.prompt = (await app.graphToPrompt()).output;
      for (const n of nodes) {
        if (!["LoraLabLoraLoader", "LoraLabLoraStack", "LoraLabStrengthSweep"].includes(n.comfyClass)) continue;
        if (!widget(n, "lora_lab_panel")) { res.problems.push(`no LoRA panel on node ${n.id}`); continue; }
        const warn = await until(() => warnOf(n) === "" ? "ok" : null, 3000);
        if (warn !== "ok") res.problems.push(`node ${n.id} warns: ${warnOf(n)}`);
      }
      for (const n of byClass("LoraLabLoraStack")) {
        const rows = widget(n, "lora_lab_rows")?.element.querySelectorAll(".lora-lab-row").length;
        const lines = String(widget(n, "loras").value).split("\n").filter((l) => l.trim() && !/^#\s*[a-z ]+$/i.test(l.trim()));
        res.stack_rows = rows;
        if (rows !== lines.length) res.problems.push(`stack shows ${rows} rows for ${lines.length} lines`);
      }
    } catch (e) {
      res.problems.push(String(e?.stack || e));
    }
  }

  const check = async (label, fn) => {
    try { report.checks[label] = await fn(); } catch (e) { report.problems.push(`${label}: ${e?.stack || e}`); }
  };

  await check("missing LoRA marked", async () => {
    const wf = structuredClone(workflows["lora_txt2img.json"]);
    wf.nodes.find((n) => n.type === "LoraLabLoraLoader").widgets_values[0] = "shared/not-here.safetensors";
    wf.nodes.find((n) => n.type === "LoraLabSampler").widgets_values[0] += " <lora:gone:0.5>";
    await load(wf, "missing.json");
    const loader = byClass("LoraLabLoraLoader")[0];
    const sampler = byClass("LoraLabSampler")[0];
    const a = await until(() => warnOf(loader));
    const b = await until(() => warnOf(sampler));
    if (a !== "missing LoRA: shared/not-here.safetensors") throw new Error(`loader warning: ${a}`);
    if (b !== "missing LoRA: gone") throw new Error(`sampler warning: ${b}`);
    return [a, b];
  });

  await check("embedding panel", async () => {
    const wf = structuredClone(workflows["lora_txt2img.json"]);
    const s = wf.nodes.find((n) => n.type === "LoraLabSampler");
    s.widgets_values[0] += ", embedding:gone";
    s.widgets_values[1] = "lowres, EasyNegative";
    await load(wf, "embeddings.json");
    const panel = widget(byClass("LoraLabSampler")[0], "lora_lab_embeddings")?.element;
    if (!panel) throw new Error("no embedding panel on Sample");
    const text = await until(() => (panel.textContent.includes("vectors") ? panel.textContent : null));
    if (!text?.includes("embedding:gone is not in the embeddings folder") || !text.includes("EasyNegative: "))
      throw new Error(`embedding panel: ${panel.textContent}`);
    return text.slice(0, 200);
  });

  await check("info panel and trigger words", async () => {
    await load(workflows["lora_txt2img.json"], "lora_txt2img.json");
    const loader = byClass("LoraLabLoraLoader")[0];
    const panel = widget(loader, "lora_lab_panel").element;
    const text = await until(() => (panel.textContent.includes("SD 1.x") ? panel.textContent : null));
    if (!text) throw new Error(`panel: ${panel.textContent}`);
    const sampler = byClass("LoraLabSampler")[0];
    const before = widget(sampler, "prompt").value;
    const name = widget(loader, "lora_name").value;
    const info = await (await api.fetchApi("/lora_lab/info?name=" + encodeURIComponent(name))).json();
    const chips = [...panel.querySelectorAll("button")];
    const trigger = chips.find((b) => b.classList.contains("trigger") && b.textContent === info.trigger_words);
    if (!trigger) throw new Error(`no trigger chip '${info.trigger_words}'`);
    trigger.click();  // the prompt already holds it: unchanged
    if (widget(sampler, "prompt").value !== before) throw new Error(`prompt after the trigger chip: ${widget(sampler, "prompt").value}`);
    const tag = info.tags.find((t) => !before.toLowerCase().includes(t.tag.toLowerCase()));
    const chip = chips.find((b) => b.textContent === `${tag.tag} ${tag.count}`);
    if (!chip) throw new Error(`no tag chip '${tag.tag} ${tag.count}'`);
    chip.click();
    const prompt = widget(sampler, "prompt").value;
    if (prompt !== `${tag.tag}, ${before}`) throw new Error(`prompt after the tag chip: ${prompt}`);
    return text.slice(0, 200);
  });

  await check("stack rows edit the text", async () => {
    await load(workflows["lora_stack.json"], "lora_stack.json");
    const stack = byClass("LoraLabLoraStack")[0];
    const rows = widget(stack, "lora_lab_rows").element;
    const before = widget(stack, "loras").value;
    rows.querySelector(".lora-lab-row input[type=checkbox]").click();
    const after = widget(stack, "loras").value;
    if (after.split("\n")[0] !== "# " + before.split("\n")[0]) throw new Error(`text after switching off: ${after}`);
    const plus = [...rows.querySelectorAll("button")].find((b) => b.textContent === "+ LoRA");
    plus.click();
    const file = await until(() => document.querySelector(".lora-lab-picker .file"));
    if (!file) throw new Error("the picker did not open");
    const picked = file.title;
    file.click();
    const last = widget(stack, "loras").value.split("\n").filter((l) => l.trim()).pop();
    if (last !== `${picked}:1`) throw new Error(`added line: ${last}`);
    const queued = (await app.graphToPrompt()).output[String(stack.id)].inputs.loras;
    if (queued !== widget(stack, "loras").value) throw new Error("the queued text is not the widget's text");
    return queued;
  });

  await check("train progress shown", async () => {
    const node = app.graph.nodes[0];
    const send = (detail) => api.dispatchEvent(new CustomEvent("lora_lab.train_progress", { detail }));
    send({ node: String(node.id), step: 1, total: 4, loss: 0.5, eta: 30 });
    send({ node: String(node.id), step: 2, total: 4, loss: 0.3, eta: 20 });
    const w = await until(() => widget(node, "lora_lab_train"));
    if (!w) throw new Error("no monitor widget");
    const live = w.element.textContent;
    if (!live.includes("step 2/4") || !live.includes("ETA 0:20")) throw new Error(`live: ${live}`);
    send({ node: String(node.id), step: 4, total: 4, loss: 0.2, eta: 0 });
    const done = w.element.textContent;
    const paths = w.element.querySelectorAll("svg path").length;
    if (!done.includes("done") || paths !== 2) throw new Error(`done: ${done}, ${paths} paths`);
    return [live, done];
  });
  return report;
}
"""


class Chrome:
    """A headless Chromium and one page, driven over the DevTools protocol."""

    def __init__(self, binary: str):
        self.profile = tempfile.TemporaryDirectory(prefix="lora-lab-chrome-", ignore_cleanup_errors=True)
        self.proc = subprocess.Popen([binary, *CHROME_FLAGS, f"--user-data-dir={self.profile.name}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)  # its own process group: closed as one
        self.events: list[dict] = []
        self._id = 0
        self._pending: dict[int, asyncio.Future] = {}

    async def connect(self, session):
        loop = asyncio.get_running_loop()
        line = ""
        while "DevTools listening on" not in line:
            line = await loop.run_in_executor(None, self.proc.stderr.readline)
            if not line and self.proc.poll() is not None:
                raise RuntimeError("Chromium exited before it listened")
        port = int(re.search(r"ws://127\.0\.0\.1:(\d+)/", line).group(1))
        async with session.get(f"http://127.0.0.1:{port}/json/list") as r:
            page = next(t for t in await r.json() if t["type"] == "page")
        self.ws = await session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        self._reader = asyncio.create_task(self._read())
        for domain in ("Runtime", "Log", "Page"):
            await self.send(f"{domain}.enable")

    async def _read(self):
        async for msg in self.ws:
            data = json.loads(msg.data)
            if "id" in data and data["id"] in self._pending:
                self._pending.pop(data["id"]).set_result(data)
            elif "method" in data:
                self.events.append(data)

    async def send(self, method: str, **params):
        self._id += 1
        fut = asyncio.get_running_loop().create_future()
        self._pending[self._id] = fut
        await self.ws.send_json({"id": self._id, "method": method, "params": params})
        reply = await asyncio.wait_for(fut, 120)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    async def evaluate(self, expression: str):
        res = await self.send("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in res:
            d = res["exceptionDetails"]
            raise RuntimeError(d.get("exception", {}).get("description") or d.get("text"))
        return res["result"].get("value")

    def errors(self) -> list[str]:
        out = []
        for e in self.events:
            p = e.get("params", {})
            if e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"]))
            elif e["method"] == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                out.append("exception: " + (d.get("exception", {}).get("description") or d.get("text", "")))
            elif e["method"] == "Log.entryAdded" and p["entry"]["level"] == "error":
                out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}".strip())
        return out

    async def close(self):
        if hasattr(self, "ws"):
            await self.ws.close()
            self._reader.cancel()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)  # Chromium and the helpers it started
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.profile.cleanup()


def workflow_files() -> list[Path]:
    return sorted((ROOT / "workflows").glob("*.json")) + sorted((ROOT / "workflows" / "comfyui").glob("*.json"))


def object_info_registry(info: dict) -> tuple[dict, dict]:
    """Node classes (their inputs as /object_info states them) and display names of the server's nodes."""
    classes = {name: type(name, (), {"INPUT_TYPES": classmethod(lambda cls, spec=node["input"]: spec)})
               for name, node in info.items()}
    return classes, {name: node.get("display_name") or name for name, node in info.items()}


def expected_prompts(object_info: dict) -> dict:
    """The headless runner's API graph of each workflow (what graphToPrompt must match): the
    runner's registry (our nodes and the core ids it runs itself), and for the nodes only
    ComfyUI runs (the bridges), their inputs as the server's /object_info states them."""
    from lora_lab.nodes.defs.runner_registry import RUNNER_CLASS_MAPPINGS, RUNNER_DISPLAY_NAME_MAPPINGS
    from lora_lab.nodes.graph.workflow import load_workflow

    classes, names = object_info_registry(object_info)
    registry, names = {**classes, **RUNNER_CLASS_MAPPINGS}, {**names, **RUNNER_DISPLAY_NAME_MAPPINGS}
    return {p.name: load_workflow(p, registry, names).prompt for p in workflow_files()}


SHOW_JS = """async (wf, name) => {
  const app = window.comfyAPI.app.app;
  for (const b of document.querySelectorAll(".p-dialog .p-dialog-close-button")) b.click(); // first-run dialogs
  await app.loadGraphData(wf, true, false, name);
  const nodes = app.graph.nodes;
  const x0 = Math.min(...nodes.map((n) => n.pos[0])) - 20, y0 = Math.min(...nodes.map((n) => n.pos[1])) - 60;
  app.canvas.ds.scale = 0.85;
  app.canvas.ds.offset = [-x0, -y0];
  app.canvas.setDirty(true, true);
  await new Promise((r) => setTimeout(r, 1200));
}"""


async def screenshots(chrome: Chrome, workflows: dict, folder: Path) -> list[str]:
    import base64

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, wf in workflows.items():
        await chrome.evaluate(f"({SHOW_JS})({json.dumps(wf)}, {json.dumps(name)})")
        shot = await chrome.send("Page.captureScreenshot", format="png")
        path = folder / (Path(name).stem + ".png")
        path.write_bytes(base64.b64decode(shot["data"]))
        out.append(str(path))
    return out


async def check(url: str, chromium: str, shots: Path | None = None) -> dict:
    import aiohttp

    workflows = {p.name: json.loads(p.read_text()) for p in workflow_files()}
    chrome = Chrome(chromium)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(url.rstrip("/") + "/object_info") as r:
                object_info = await r.json()
            await chrome.connect(session)
            await chrome.send("Page.navigate", url=url)
            for _ in range(240):  # the editor boots: extensions, node defs, the default graph
                ready = await chrome.evaluate("!!(window.comfyAPI?.app?.app?.graph && window.comfyAPI.app.app.canvas"
                                              " && document.readyState === 'complete')")
                if ready:
                    break
                await asyncio.sleep(0.5)
            else:
                raise RuntimeError("the editor did not start")
            await asyncio.sleep(2)
            boot_errors = chrome.errors()
            chrome.events.clear()
            report = await chrome.evaluate(f"({PAGE_FN})({json.dumps(workflows)})")
            await asyncio.sleep(1)
            report["boot_errors"] = boot_errors
            report["load_errors"] = chrome.errors()
            if shots is not None:
                report["screenshots"] = await screenshots(chrome, workflows, shots)
    finally:
        await chrome.close()
    want = expected_prompts(object_info)
    for name, res in report["workflows"].items():
        got = {str(k): v for k, v in (res.pop("prompt") or {}).items()}
        exp = want[name]
        diff = [nid for nid in set(got) | set(exp) if normalise(got.get(nid)) != normalise(exp.get(nid))]  # 7 == 7.0
        res["prompt_matches_runner"] = not diff
        if diff:
            res.setdefault("problems", []).append(
                f"graphToPrompt differs from the runner's conversion at nodes {sorted(diff)}: "
                f"{json.dumps({d: [got.get(d), exp.get(d)] for d in sorted(diff)})[:1500]}")
    return report


def normalise(node):
    """(class type, inputs, _meta) with links as [str id, slot]; compared with ==, so 7 equals 7.0."""
    if node is None:
        return None
    inputs = {k: ([str(v[0]), v[1]] if isinstance(v, list) and len(v) == 2 else v) for k, v in node["inputs"].items()}
    return node["class_type"], inputs, node.get("_meta")


def write_embedding(path: Path) -> None:
    """An A1111-style textual-inversion file (emb_params: 2 vectors of 768) for the embedding panel."""
    import torch
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"emb_params": torch.zeros(2, 768)}, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="a running ComfyUI with LoRA Lab installed")
    ap.add_argument("--comfy-dir", help="start this ComfyUI (CPU mode, temporary base directory)")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    ap.add_argument("--json", action="store_true", help="print the whole report as JSON")
    ap.add_argument("--screenshots", type=Path, metavar="DIR", help="save a screenshot of each loaded workflow here")
    args = ap.parse_args(argv)
    server = None
    if not args.url:
        if not args.comfy_dir:
            ap.error("give --url or --comfy-dir")
        from test_comfyui_host import ComfyServer, prepare_models

        base = Path(tempfile.mkdtemp(prefix="lora-lab-comfy-"))
        prepare_models(base)  # (the demo LoRAs, an embedding, ...)
        server = ComfyServer(args.comfy_dir, base)
        args.url = server.url
    try:
        report = asyncio.run(check(args.url, args.chromium, args.screenshots))
    finally:
        if server is not None:
            server.stop()
    problems = [f"{n}: {p}" for n, r in report["workflows"].items() for p in r.get("problems", [])]
    problems += [f"page: {p}" for p in report.get("problems", [])]
    for label, result in report.get("checks", {}).items():
        print(f"ok   {label}: {json.dumps(result)[:300]}")
    ours = [e for e in report["boot_errors"] + report["load_errors"] if re.search(r"lora|LoraLab|extensions/", e, re.IGNORECASE)]
    problems += [f"console: {e}" for e in ours]
    if args.json:
        print(json.dumps(report, indent=1))
    for name, r in report["workflows"].items():
        print(f"{'ok  ' if not r.get('problems') else 'FAIL'} {name}: {r.get('nodes')} nodes, "
              f"prompt matches the runner: {r.get('prompt_matches_runner')}")
    for e in report["boot_errors"] + report["load_errors"]:
        print(f"  page error: {e}")
    for p in problems:
        print(f"  problem: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
