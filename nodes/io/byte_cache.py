"""Least-recently-used caches bounded by bytes, and one place that frees them all.

The checkpoint cache (model/checkpoint.py) and the parsed-LoRA cache (lora/lora_formats.py)
hold tensors: counting items says nothing about memory (two SDXL checkpoints are 13 GB, two
tiny ones 50 MB). Each cache here has a byte budget; adding an item evicts the least recently
used ones until the total fits. The item just added always stays, even alone over budget: its
caller holds it anyway, so dropping it would free nothing and load it again next time.

`free_memory(n)` / `clear_all()` reach every cache made here: a host's memory manager (inside
ComfyUI, defs/ connects its free-memory and unload requests) calls them; core code never
imports the host.

Budgets: LORA_LAB_CHECKPOINT_CACHE_MB / LORA_LAB_LORA_CACHE_MB (megabytes) override the
defaults given by each cache's owner.
"""
from __future__ import annotations

import logging
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable

import torch

log = logging.getLogger(__name__)

_CACHES: weakref.WeakSet[ByteLRU] = weakref.WeakSet()


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes held by the tensors' storages, each storage counted once (views share one)."""
    seen: set = set()
    total = 0
    for t in tensors:
        if t is None or t.is_meta:
            continue
        st = t.untyped_storage()
        key = (st.data_ptr(), t.device)
        if key in seen:
            continue
        seen.add(key)
        total += st.nbytes()
    return total


def module_bytes(*modules: torch.nn.Module) -> int:
    """Bytes of the parameters and buffers of the modules (shared storages once)."""
    return tensor_bytes(t for m in modules for t in (*m.parameters(), *m.buffers()))


def budget_from_env(var: str, default_bytes: int) -> int:
    """The byte budget named by environment variable `var` (in MB), else `default_bytes`."""
    raw = os.environ.get(var)
    if raw is None or raw.strip() == "":
        return default_bytes
    try:
        mb = float(raw)
    except ValueError:
        raise ValueError(f"{var}={raw!r}: expected a number of megabytes") from None
    if mb < 0:
        raise ValueError(f"{var}={raw!r}: must be 0 or more megabytes")
    return int(mb * (1 << 20))


class ByteLRU:
    """key -> value, least recently used out first, the total of size(value) within budget."""

    def __init__(self, name: str, budget_bytes: int, size: Callable[[object], int]):
        if budget_bytes < 0:
            raise ValueError(f"cache {name!r}: budget must be >= 0 bytes, got {budget_bytes}")
        self.name = name
        self.budget = int(budget_bytes)
        self._size = size
        self._items: OrderedDict = OrderedDict()  # key -> (value, bytes)
        self._lock = threading.RLock()
        self.evictions = 0
        _CACHES.add(self)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    @property
    def total_bytes(self) -> int:
        return sum(b for _, b in self._items.values())

    def get(self, key: Hashable):
        """The value for `key` (now the most recently used), or None."""
        with self._lock:
            hit = self._items.get(key)
            if hit is None:
                return None
            self._items.move_to_end(key)
            return hit[0]

    def put(self, key: Hashable, value) -> None:
        with self._lock:
            self._items.pop(key, None)
            self._items[key] = (value, int(self._size(value)))
            self._shrink_to(self.budget, keep_newest=True)

    def get_or_load(self, key: Hashable, load: Callable[[], object]):
        value = self.get(key)
        if value is None:
            value = load()
            self.put(key, value)
        return value

    def free(self, n_bytes: int) -> int:
        """Evict least recently used items until `n_bytes` are freed (or none is left)."""
        with self._lock:
            before = self.total_bytes
            self._shrink_to(max(0, before - int(n_bytes)), keep_newest=False)
            return before - self.total_bytes

    def clear(self) -> None:
        with self._lock:
            self.evictions += len(self._items)
            self._items.clear()

    def _shrink_to(self, limit: int, keep_newest: bool) -> None:
        total = self.total_bytes
        while self._items and total > limit and (len(self._items) > 1 or not keep_newest):
            key, (_, b) = self._items.popitem(last=False)
            total -= b
            self.evictions += 1
            log.debug("cache %s: evicted %r (%.1f MB), %.1f MB left", self.name, key, b / 2**20, total / 2**20)


def total_bytes() -> int:
    """Bytes held by every cache made here."""
    return sum(c.total_bytes for c in list(_CACHES))


def free_memory(n_bytes: int) -> int:
    """Free at least `n_bytes` from the caches (largest total first); returns bytes freed."""
    freed = 0
    for cache in sorted(_CACHES, key=lambda c: -c.total_bytes):
        if freed >= n_bytes:
            break
        freed += cache.free(n_bytes - freed)
    return freed


def clear_all() -> None:
    """Empty every cache (a host's 'unload models')."""
    for cache in list(_CACHES):
        cache.clear()
