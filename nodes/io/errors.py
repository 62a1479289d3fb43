"""Exceptions with the node, input and value that caused them."""
from __future__ import annotations


class LoraLabError(Exception):
    """Base class: a user-facing error with a clear message."""


class NodeInputError(LoraLabError, ValueError):
    """A node input has a bad value. The message names the node, the input and the value."""

    def __init__(self, node: str, input_name: str, value, reason: str):
        self.node, self.input_name, self.value, self.reason = node, input_name, value, reason
        super().__init__(f"{node}: input {input_name!r} = {value!r}: {reason}")


class ModelPathError(LoraLabError, ValueError):
    """A model/output name that is missing or resolves outside its folder."""


class CheckpointError(LoraLabError, ValueError):
    """A checkpoint file that cannot be read: corrupt, truncated, pickled, unknown family."""


class InterruptedByUser(LoraLabError):
    """The user asked to stop (Ctrl-C, or ComfyUI's interrupt)."""


class OutputWriteError(LoraLabError, OSError):
    """An output could not be written (a full disk, a quota, an I/O error): the message
    names the target; nothing was left at it. Still an OSError for callers that catch those."""
