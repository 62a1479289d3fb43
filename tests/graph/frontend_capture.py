"""What ComfyUI's frontend itself queues for each UI graph of tests/graph/frontend_cases.py: loads
each in the editor (headless Chromium over the DevTools protocol, tests/editor_check.py) with
`app.loadGraphData`, calls `app.graphToPrompt()` and keeps its `output` (the API graph).

Capture (rewrites tests/graph/frontend_fixtures/*.api.json and frontend.json):

    python tests/graph/frontend_cases.py
    COMFYUI_DIR=/path/to/ComfyUI python tests/graph/frontend_capture.py \\
        --front-end-root /path/to/comfyui_frontend_package/static --write

(ComfyUI's Python; the frontend from PyPI: `pip download comfyui-frontend-package==1.58.1
--no-deps`, unzipped). Without --write it prints the differences to the committed fixtures.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from editor_check import object_info_registry  # noqa: E402, F401 (after the path setup; for the tests)
from frontend_cases import CASES, FIXTURE_DIR  # noqa: E402

PAGE_FN = r"""
async (cases) => {
  const app = window.comfyAPI.app.app;
  const out = { version: window.__COMFYUI_FRONTEND_VERSION__, cases: {} };
  for (const [name, wf] of Object.entries(cases)) {
    try {
      await app.loadGraphData(structuredClone(wf), true, true, name);
      await new Promise((r) => setTimeout(r, 300));
      out.cases[name] = { output: (await app.graphToPrompt()).output };
    } catch (e) {
      out.cases[name] = { error: String(e?.stack || e) };
    }
  }
  return out;
}
"""


def load_cases(folder: Path = FIXTURE_DIR) -> dict:
    return {name: json.loads((folder / f"{name}.ui.json").read_text()) for name in CASES}


async def _capture(url: str, chromium: str, cases: dict) -> dict:
    import aiohttp
    from editor_check import Chrome

    chrome = Chrome(chromium)
    try:
        async with aiohttp.ClientSession() as session:
            await chrome.connect(session)
            await chrome.send("Page.navigate", url=url)
            for _ in range(240):
                if await chrome.evaluate("!!(window.comfyAPI?.app?.app?.graph && window.comfyAPI.app.app.canvas"
                                         " && document.readyState === 'complete')"):
                    break
                await asyncio.sleep(0.5)
            else:
                raise RuntimeError("the editor did not start")
            await asyncio.sleep(2)
            chrome.events.clear()
            report = {"cases": {}}
            items = list(cases.items())
            for i in range(0, len(items), 12):  # a few graphs per call (each call has a time limit)
                part = await chrome.evaluate(f"({PAGE_FN})({json.dumps(dict(items[i:i + 12]))})")
                report["version"] = part["version"]
                report["cases"].update(part["cases"])
            report["page_errors"] = chrome.errors()
            report["litegraph_warnings"] = [  # e.g. "LiteGraph: duplicate subgraph node ID 1 remapped to 9"
                " ".join(str(a.get("value", "")) for a in e["params"]["args"]) for e in chrome.events
                if e["method"] == "Runtime.consoleAPICalled" and e["params"].get("type") == "warning"
                and "LiteGraph" in str(e["params"]["args"][0].get("value", ""))]
            report["browser"] = (await chrome.send("Browser.getVersion")).get("product")
            async with session.get(url.rstrip("/") + "/system_stats") as r:
                report["comfyui_version"] = ((await r.json()).get("system") or {}).get("comfyui_version")
            return report
    finally:
        await chrome.close()


def capture(url: str, cases: dict, chromium: str = "/usr/bin/chromium") -> dict:
    """{"version": frontend version, "cases": {name: {"output": API graph} | {"error": text}},
    "page_errors": [...]} for a running ComfyUI at `url`."""
    return asyncio.run(_capture(url, chromium, cases))


def start_server(comfy_dir: str, front_end_root: str | None):
    from test_comfyui_host import ComfyServer, prepare_models

    base = Path(tempfile.mkdtemp(prefix="lora-lab-frontend-"))
    prepare_models(base)
    extra = ("--front-end-root", front_end_root) if front_end_root else ()
    return ComfyServer(comfy_dir, base, extra_args=extra)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="a running ComfyUI (else COMFYUI_DIR is started)")
    ap.add_argument("--front-end-root", default=os.environ.get("LORA_LAB_FRONTEND_ROOT"))
    ap.add_argument("--write", action="store_true", help="write the captured API graphs as the fixtures")
    args = ap.parse_args(argv)
    server = None
    if not args.url:
        server = start_server(os.environ["COMFYUI_DIR"], args.front_end_root)
        args.url = server.url
    try:
        report = capture(args.url, load_cases())
    finally:
        if server is not None:
            server.stop()
    bad = 0
    for name, res in report["cases"].items():
        if "error" in res:
            print(f"FAIL {name}: {res['error'][:2000]}")
            bad += 1
            continue
        path = FIXTURE_DIR / f"{name}.api.json"
        if args.write:
            path.write_text(json.dumps(res["output"], indent=1, sort_keys=True) + "\n")
            print(f"wrote {path}")
        elif not path.exists() or json.loads(path.read_text()) != res["output"]:
            print(f"DIFF {name}: {json.dumps(res['output'], sort_keys=True)[:3000]}")
            bad += 1
    if args.write:
        (FIXTURE_DIR / "frontend.json").write_text(json.dumps(
            {"frontend_version": report["version"], "comfyui_version": report["comfyui_version"],
             "browser": report["browser"], "captured_with": "tests/graph/frontend_capture.py --write",
             "litegraph_warnings": report["litegraph_warnings"]},
            indent=1) + "\n")
    for e in report["page_errors"]:
        print("  page:", e[:300])
    print(f"frontend {report['version']}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
