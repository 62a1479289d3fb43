"""Warnings a user should see where they work, not only in a log: a LoRA that matched only
some of its layers, say. `warn` logs the message and hands it to every open `collect()`
(the headless runner collects per node for the `--json` summary; the LoRA nodes collect to
return it as their ComfyUI `ui` output, which the editor shows on the node)."""
from __future__ import annotations

import contextlib
import contextvars
import logging

_sinks: contextvars.ContextVar = contextvars.ContextVar("lora_lab_notices", default=())

UI_KEY = "lora_lab_warnings"  # the key of a node's `ui` output the editor extension reads


@contextlib.contextmanager
def collect():
    """Yields the list the warnings of the `with` block are appended to (nested blocks: all)."""
    notes: list = []
    token = _sinks.set((*_sinks.get(), notes))
    try:
        yield notes
    finally:
        _sinks.reset(token)


def warn(logger: logging.Logger, message: str) -> None:
    """Log `message` as a warning and record it in every open collect()."""
    logger.warning("%s", message)
    for sink in _sinks.get():
        sink.append(message)


def with_ui(result: tuple, notes: list):
    """A node's return value: `result`, plus the warnings as its ui output when there are any."""
    return {"ui": {UI_KEY: list(notes)}, "result": result} if notes else result
