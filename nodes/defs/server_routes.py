"""ComfyUI server glue: the `/lora_lab/...` routes and the Train LoRA progress events.

Importing this module costs nothing and needs neither ComfyUI nor aiohttp. The pack's entry
(`__init__.py`) calls `register_routes()` only when it runs inside ComfyUI's server; the
routes only wrap the plain functions of lora_info.py (tested without ComfyUI).

    GET /lora_lab/loras              {"names": [...], "folders": [...]}
    GET /lora_lab/info?name=<name>   lora_info.lora_info(name); 400 refused name, 404 no such
                                     file, 422 not a readable LoRA
    GET /lora_lab/embeddings         {"names": [...]} (the embeddings folders)
    GET /lora_lab/embedding_info?name=<name>
                                     embeddings.embedding_info(name); the same statuses

ComfyUI also serves every route under /api/... (the frontend's `api.fetchApi` uses that).
Nothing of ComfyUI is patched: routes are added to `PromptServer.instance.routes`, the
documented extension point, before the server builds its app.
"""
from __future__ import annotations

import logging
import math
import sys

log = logging.getLogger(__name__)

TRAIN_PROGRESS_EVENT = "lora_lab.train_progress"
_registered = False


def _prompt_server():
    """ComfyUI's running PromptServer, or None outside ComfyUI."""
    server = sys.modules.get("server")
    cls = getattr(server, "PromptServer", None) if server is not None else None
    return getattr(cls, "instance", None) if cls is not None else None


def info_response(name: str | None) -> tuple[int, dict]:
    """(HTTP status, JSON body) for GET /lora_lab/info?name=..."""
    from ..demo.demo_lora import ensure_if_demo
    from ..io.errors import LoraLabError
    from ..lora.lora_info import LoraInfoError, lora_info

    try:
        if isinstance(name, str):
            ensure_if_demo(name)  # only an exact demo name writes anything
        return 200, lora_info(name or "")
    except LoraInfoError as e:
        return e.status, {"error": str(e)}
    except LoraLabError as e:  # a file that cannot be read as a LoRA
        return 422, {"error": str(e)}
    except (OSError, ValueError) as e:  # a name the file system refuses: never a 500
        return 400, {"error": f"name {str(name)[:200]!r}: {e}"}


def embedding_info_response(name: str | None) -> tuple[int, dict]:
    """(HTTP status, JSON body) for GET /lora_lab/embedding_info?name=..."""
    from pathlib import PurePosixPath

    from ..io import paths
    from ..io.errors import LoraLabError, ModelPathError
    from ..sampling.embeddings import embedding_info

    if not isinstance(name, str) or not name.strip():
        return 400, {"error": "give ?name=<an embedding file name inside the embeddings folder>"}
    if PurePosixPath(name.replace("\\", "/")).suffix.lower() not in (*paths.EMBEDDING_EXTENSIONS, ""):
        return 400, {"error": f"{name[:200]!r} is not an embedding file name ({paths.EMBEDDING_EXTENSIONS})"}
    try:
        paths.resolve("embeddings", name, must_exist=False)  # refuses absolute paths, '..', escaping links
    except ModelPathError as e:
        return 400, {"error": str(e)}
    except (OSError, ValueError) as e:
        return 400, {"error": f"name {name[:200]!r}: {e}"}
    try:
        return 200, embedding_info(name)
    except ModelPathError as e:  # none, or several files answer to the name
        return 404, {"error": str(e)}
    except LoraLabError as e:  # unreadable, not an embedding, refused pickle
        return 422, {"error": str(e)}
    except (OSError, ValueError) as e:
        return 400, {"error": f"name {name[:200]!r}: {e}"}


def embedding_list_response() -> tuple[int, dict]:
    from ..sampling.embeddings import embedding_list

    return 200, embedding_list()


def list_response() -> tuple[int, dict]:
    from ..demo.demo_lora import DEMO_LORA_NAMES
    from ..lora.lora_info import lora_list

    return 200, lora_list(DEMO_LORA_NAMES)  # demo LoRAs are written on first use


def register_routes(prompt_server=None) -> bool:
    """Add the routes to ComfyUI's route table (once). False when not inside ComfyUI."""
    global _registered
    ps = prompt_server if prompt_server is not None else _prompt_server()
    if ps is None or _registered:
        return False
    import asyncio
    import contextvars

    from aiohttp import web

    async def _call(fn, *args):  # file I/O off the event loop, in the caller's context
        ctx = contextvars.copy_context()
        status, body = await asyncio.get_running_loop().run_in_executor(None, ctx.run, fn, *args)
        return web.json_response(body, status=status)

    @ps.routes.get("/lora_lab/loras")
    async def lora_lab_loras(request):
        return await _call(list_response)

    @ps.routes.get("/lora_lab/info")
    async def lora_lab_info(request):
        return await _call(info_response, request.query.get("name"))

    @ps.routes.get("/lora_lab/embeddings")
    async def lora_lab_embeddings(request):
        return await _call(embedding_list_response)

    @ps.routes.get("/lora_lab/embedding_info")
    async def lora_lab_embedding_info(request):
        return await _call(embedding_info_response, request.query.get("name"))

    _registered = True
    log.debug("LoRA Lab routes registered")
    return True


def train_progress_payload(node_id, step: int, total: int, loss: float | None, eta: float | None) -> dict:
    """The event body the editor's Train LoRA widget reads (JSON-safe: no NaN/inf)."""
    def finite(x):
        return float(x) if x is not None and math.isfinite(float(x)) else None

    return {"node": str(node_id) if node_id is not None else None, "step": int(step), "total": int(total),
            "loss": finite(loss), "eta": finite(eta)}


def report_train_progress(node_id, step: int, total: int, loss: float | None = None,
                          eta: float | None = None) -> bool:
    """Tell the editor how a Train LoRA node is doing (node_id = its UNIQUE_ID hidden input).

    Sends the `lora_lab.train_progress` event to the client that queued the prompt. A no-op
    returning False outside ComfyUI (headless runner, tests), so trainers can always call it.
    Call it every step or every few steps, and once with step == total at the end.
    """
    ps = _prompt_server()
    if ps is None or not hasattr(ps, "send_sync"):
        return False
    ps.send_sync(TRAIN_PROGRESS_EVENT, train_progress_payload(node_id, step, total, loss, eta),
                 getattr(ps, "client_id", None))
    return True
