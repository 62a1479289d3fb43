"""Byte-budget LRU caches: eviction by bytes (not count), recency, freeing from a host."""
from __future__ import annotations

import pytest
import torch

from lora_lab.nodes.io import byte_cache
from lora_lab.nodes.io.byte_cache import ByteLRU, budget_from_env, module_bytes, tensor_bytes


def _t(n_bytes):
    return torch.zeros(n_bytes // 4)  # fp32


def test_evicts_least_recently_used_by_bytes():
    c = ByteLRU("t", 1000, lambda v: tensor_bytes([v]))
    c.put("a", _t(400))
    c.put("b", _t(400))
    assert c.get("a") is not None  # a is now the most recent
    c.put("c", _t(400))  # 1200 > 1000: b (least recent) goes, not a
    assert "b" not in c and "a" in c and "c" in c and c.total_bytes == 800
    c.put("d", _t(40))  # small items fit beside the big ones: a count bound would have evicted
    assert len(c) == 3 and c.total_bytes == 840
    c.put("e", _t(900))  # oldest first until it fits: a and c go, d (40) still fits beside e
    assert list(c._items) == ["d", "e"] and c.evictions == 3


def test_an_item_over_budget_alone_is_kept():
    c = ByteLRU("t", 100, lambda v: tensor_bytes([v]))
    big = _t(400)
    c.put("big", big)
    assert c.get("big") is big  # its caller holds it anyway: dropping it would free nothing
    c.put("small", _t(40))
    assert "big" not in c and "small" in c


def test_get_or_load_loads_once():
    c = ByteLRU("t", 10_000, lambda v: tensor_bytes([v]))
    calls = []
    for _ in range(3):
        c.get_or_load("k", lambda: calls.append(1) or _t(100))
    assert calls == [1]


def test_free_memory_and_clear_all_reach_every_cache():
    byte_cache.clear_all()  # the process-wide caches may hold what earlier tests loaded
    a = ByteLRU("a", 10_000, lambda v: tensor_bytes([v]))
    b = ByteLRU("b", 10_000, lambda v: tensor_bytes([v]))
    for i in range(3):
        a.put(i, _t(1000))
    b.put("x", _t(400))
    freed = byte_cache.free_memory(1500)
    assert freed >= 1500 and a.total_bytes == 1000 and b.total_bytes == 400  # the biggest cache first, oldest first
    assert 2 in a
    byte_cache.clear_all()
    assert len(a) == 0 and len(b) == 0


def test_storage_counted_once_for_views():
    x = _t(800)
    assert tensor_bytes([x, x[:10], x.view(2, -1)]) == 800
    m = torch.nn.Linear(4, 8)
    assert module_bytes(m) == (32 + 8) * 4


def test_budget_from_env(monkeypatch):
    monkeypatch.setenv("LL_TEST_MB", "1.5")
    assert budget_from_env("LL_TEST_MB", 7) == int(1.5 * 2**20)
    monkeypatch.delenv("LL_TEST_MB")
    assert budget_from_env("LL_TEST_MB", 7) == 7
    for bad in ("lots", "-1"):
        monkeypatch.setenv("LL_TEST_MB", bad)
        with pytest.raises(ValueError, match=f"LL_TEST_MB={bad!r}"):
            budget_from_env("LL_TEST_MB", 7)
    with pytest.raises(ValueError, match="budget"):
        ByteLRU("neg", -1, len)
