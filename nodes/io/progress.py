"""Progress and interrupt: ComfyUI's progress bar and interrupt flag inside ComfyUI, tqdm standalone."""
from __future__ import annotations

import sys

from .errors import InterruptedByUser


def _in_comfy() -> bool:
    return "comfy.utils" in sys.modules and "comfy.model_management" in sys.modules


class Progress:
    """`with Progress(total, desc) as p: p.update(1)`; checks the interrupt on every update."""

    def __init__(self, total: int, desc: str = "", disable: bool = False):
        self.total = int(total)
        self._comfy = None
        self._tqdm = None
        if _in_comfy():
            self._comfy = sys.modules["comfy.utils"].ProgressBar(self.total)
        elif not disable:
            from tqdm.auto import tqdm

            self._tqdm = tqdm(total=self.total, desc=desc, leave=False, dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        check_interrupt()
        if self._comfy is not None:
            self._comfy.update(n)
        if self._tqdm is not None:
            self._tqdm.update(n)

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def check_interrupt() -> None:
    """Raise ComfyUI's own interrupt exception when the user pressed Cancel."""
    if _in_comfy():
        sys.modules["comfy.model_management"].throw_exception_if_processing_interrupted()


__all__ = ["Progress", "check_interrupt", "InterruptedByUser"]
