"""Capacity-bounded k-means, LSH, MGDA and the FAISS index."""

from __future__ import annotations

import numpy as np
import torch

from memory_store.config import IndexSettings
from memory_store.routing.index import KeyIndex
from memory_store.update.mapping import LshTable, capacity_kmeans
from memory_store.update.trainer import mgda_direction


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_kmeans_respects_capacity_and_groups_neighbours():
    rng = np.random.default_rng(0)
    centres = _unit(rng.standard_normal((3, 16)))
    keys = _unit(np.repeat(centres, 4, axis=0) + 0.05 * rng.standard_normal((12, 16)))
    labels = capacity_kmeans(keys, capacity=4)
    assert len(set(labels)) == 3
    assert np.bincount(labels).max() <= 4
    for c in range(3):  # each true group lands in one cluster
        assert len(set(labels[c * 4:(c + 1) * 4])) == 1
    tight = capacity_kmeans(keys, capacity=5)
    assert np.bincount(tight).max() <= 5 and len(set(tight)) == 3


def test_lsh_is_deterministic_and_local():
    rng = np.random.default_rng(1)
    keys = _unit(rng.standard_normal((50, 32)))
    table = LshTable(32, 8, seed=3)
    b = table.buckets(keys)
    assert np.array_equal(b, LshTable(32, 8, seed=3).buckets(keys))
    assert b.min() >= 0 and b.max() < 256
    near = _unit(keys + 1e-4 * rng.standard_normal(keys.shape))
    assert (table.buckets(near) == b).mean() > 0.9


def test_mgda_min_norm_combination():
    g_e, g_u = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    d, a = mgda_direction(g_e, g_u)
    assert abs(a - 0.5) < 1e-6 and torch.allclose(d, torch.tensor([0.5, 0.5]))
    d, a = mgda_direction(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0]))
    assert torch.allclose(d, torch.tensor([1.0, 0.0]))
    d, a = mgda_direction(torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 0.1]))
    assert d.norm() < 0.2  # opposing gradients: a short compromise step


def test_exact_and_approximate_index_agree(tmp_path):
    rng = np.random.default_rng(2)
    keys = _unit(rng.standard_normal((2000, 32)))
    ids = [f"mem_{i:06d}" for i in range(2000)]
    queries = _unit(keys[:200] + 0.05 * rng.standard_normal((200, 32)))
    exact = KeyIndex(keys, ids, IndexSettings(kind="flat"))
    sims, names = exact.search(queries)
    assert [n[0] for n in names] == ids[:200]
    for kind in ("hnsw", "ivf"):
        approx = KeyIndex(keys, ids, IndexSettings(kind=kind))
        assert approx.kind == kind
        recall = np.mean([a[0] == e[0] for a, e in zip(approx.search(queries)[1], names,
                                                          strict=True)])
        assert recall >= 0.95
    auto = KeyIndex(keys, ids, IndexSettings(kind="auto", approximate_from=1000))
    assert auto.kind == "ivf"
    exact.save(tmp_path / "i.faiss")
    assert KeyIndex.read_count(tmp_path / "i.faiss") == 2000
