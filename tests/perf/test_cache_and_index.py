"""The LRU cache of materialised adapters (evicts, reloads, keyed by content hash) and the
automatic choice of an approximate index for large codebooks."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from memory_store import Loka, LokaConfig
from memory_store.codebook.synthetic import publish_synthetic, random_adapter
from memory_store.config import IndexSettings
from memory_store.lora.weights import adapter_hash, save_adapter
from memory_store.routing.index import KeyIndex
from memory_store.serving.adapters import AdapterCache
from memory_store.types import GenerationRequest

from .conftest import B_STD, Codebook


def test_lru_evicts_and_reloads(codebook: Codebook) -> None:
    small = Loka.open(codebook.store, codebook.model, adapter_cache_size=2)
    try:
        def answer(i: int) -> str:
            req = GenerationRequest(codebook.prompts[i], 8, memory=codebook.memories[i])
            return small.generate([req])[0].text

        first = [answer(i) for i in range(4)]  # four memories through a cache of two
        assert len(small.adapters) == 2
        assert [answer(i) for i in range(4)] == first  # evicted ones read back from disk
        expected = codebook.loka.generate([GenerationRequest(p, 8, memory=m) for p, m in zip(
            codebook.prompts[:4], codebook.memories[:4], strict=True)])
        assert first == [r.text for r in expected]
    finally:
        small.close()


def test_cache_is_least_recently_used_and_keyed_by_content(codebook: Codebook,
                                                           tmp_path: Path) -> None:
    layout = codebook.loka.layout
    folders = {}
    for seed in range(3):
        w = random_adapter(layout, 8, 16.0, seed, B_STD)
        digest = adapter_hash(w)
        save_adapter(w, layout, "m", tmp_path / "adapters" / "mem_000001" / digest)
        folders[seed] = (digest, f"adapters/mem_000001/{digest}")
    cache = AdapterCache(tmp_path, capacity=2)
    a = cache.get("mem_000001", *folders[0])
    b = cache.get("mem_000001", *folders[1])  # same memory id, other content: another entry
    assert not torch_equal(a, b)
    assert cache.get("mem_000001", *folders[0]) is a  # hit; a is now the most recent
    cache.get("mem_000001", *folders[2])  # evicts b, the least recently used
    assert len(cache) == 2
    assert cache.get("mem_000001", *folders[0]) is a
    b2 = cache.get("mem_000001", *folders[1])  # read back from disk: equal, not the same
    assert b2 is not b and torch_equal(b2, b)


def torch_equal(x, y) -> bool:
    return all(bool((x.a[k] == y.a[k]).all() and (x.b[k] == y.b[k]).all()) for k in x.a)


def test_index_kind_switches_at_the_threshold() -> None:
    settings = IndexSettings(approximate_from=50)
    keys = np.random.default_rng(0).standard_normal((50, 16)).astype(np.float32)
    keys /= np.linalg.norm(keys, axis=1, keepdims=True)
    assert KeyIndex(keys[:49], [f"m{i}" for i in range(49)], settings).kind == "flat"
    approximate = KeyIndex(keys, [f"m{i}" for i in range(50)], settings)
    assert approximate.kind == "ivf"
    _, names = approximate.search(keys, 1)
    assert [n[0] for n in names] == [f"m{i}" for i in range(50)]


def test_engine_serves_a_large_codebook_with_the_approximate_index(
        codebook: Codebook, tmp_path: Path) -> None:
    config = LokaConfig(index=IndexSettings(approximate_from=8))
    loka = Loka.open(tmp_path, codebook.model, config=config)
    memories = [m for m, _ in publish_synthetic(loka, codebook.prompts, len(codebook.prompts))]
    loka.close()
    loka = Loka.open(tmp_path, codebook.model, config=config)
    try:
        assert loka.codebook_info()["index"] == "ivf"
        assert [r.memory_id for r in loka.route(codebook.prompts)] == memories
    finally:
        loka.close()
