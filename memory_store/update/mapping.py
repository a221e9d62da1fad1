"""Similarity-aware mapping of knowledge pieces to memories.

- ``capacity_kmeans``: a batch of n keys -> K = ceil(n / capacity) clusters, none larger than
  ``capacity`` (spherical k-means with a capacity-bounded greedy assignment).
- ``LshTable``: random-hyperplane LSH for sequential updates; its settings are pinned in the
  store when it is created (``pinned_lsh``), so stored buckets stay valid.
- ``join_existing``: sequential updates join the nearest existing memory with room in their
  bucket (a bucket holds several memories).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from memory_store.codebook.store import MemoryRecord, Store
from memory_store.config import MappingSettings
from memory_store.errors import ModelMismatch
from memory_store.types import ConflictDecision

logger = logging.getLogger(__name__)

LSH_META = "lsh"


@dataclass
class Group:
    """Pieces that will form one memory; ``memory_id`` None until a new memory is allocated."""

    piece_ids: list[str]
    memory_id: str | None = None
    conflict: ConflictDecision | None = None
    multitask: bool = False
    kind: str = "edit"
    extra_retain: list[tuple[str, str]] = field(default_factory=list)


def capacity_kmeans(keys: np.ndarray, capacity: int, iters: int = 25, seed: int = 0) -> np.ndarray:
    """(n, d) unit keys -> (n,) cluster labels in [0, K) with at most ``capacity`` per cluster."""
    n = keys.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    k = math.ceil(n / capacity)
    if k == 1:
        return np.zeros(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    # k-means++ seeding on cosine distance
    centres = [keys[rng.integers(n)]]
    for _ in range(1, k):
        d = 1.0 - np.max(keys @ np.stack(centres).T, axis=1)
        p = np.clip(d, 1e-12, None)
        centres.append(keys[rng.choice(n, p=p / p.sum())])
    c = np.stack(centres)
    labels = np.zeros(n, dtype=np.int64)
    for _ in range(iters):
        new = _assign(keys @ c.T, capacity)
        if np.array_equal(new, labels) and _ > 0:
            break
        labels = new
        for j in range(k):
            members = keys[labels == j]
            if len(members):
                m = members.mean(0)
                c[j] = m / (np.linalg.norm(m) + 1e-12)
    return labels


def _assign(sims: np.ndarray, capacity: int) -> np.ndarray:
    """Greedy assignment by decreasing similarity, respecting capacity."""
    n, k = sims.shape
    labels = np.full(n, -1, dtype=np.int64)
    room = np.full(k, capacity)
    order = np.argsort(-sims, axis=None, kind="stable")
    for flat in order:
        i, j = divmod(int(flat), k)
        if labels[i] < 0 and room[j] > 0:
            labels[i] = j
            room[j] -= 1
    return labels


class LshTable:
    """Random-hyperplane LSH over keys: ``bucket(key)`` in [0, 2**bits)."""

    def __init__(self, dim: int, bits: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.planes = rng.standard_normal((bits, dim)).astype(np.float32)  # (b, d)
        self.weights = (1 << np.arange(bits, dtype=np.int64))

    def buckets(self, keys: np.ndarray) -> np.ndarray:
        """(n, d) keys -> (n,) buckets; O(b d) per key."""
        signs = (keys @ self.planes.T) > 0  # (n, b)
        return (signs.astype(np.int64) * self.weights).sum(1)


def pinned_lsh(store: Store, bits: int, seed: int, dim: int) -> LshTable:
    """The LSH table of ``store``. Its settings are pinned in the store's meta when it is
    created (or first opened by a version that pins them); later settings never change the
    planes, because every stored memory's bucket was computed with them."""
    raw = store.get_meta(LSH_META)
    pinned = json.loads(raw) if raw is not None else {}
    if pinned.get("dim") not in (None, dim):
        raise ModelMismatch(f"the store's LSH planes are {pinned['dim']}-dimensional, the "
                            f"model's keys {dim}", field="model")
    if "bits" in pinned and (pinned["bits"], pinned["seed"]) != (bits, seed):
        logger.warning("mapping.lsh_bits=%d / seed %d differ from the store's pinned LSH "
                       "settings (%d bits, seed %d): using the pinned ones", bits, seed,
                       pinned["bits"], pinned["seed"])
    pinned = {"bits": bits, "seed": seed, **pinned, "dim": dim}
    if json.loads(raw or "{}") != pinned:
        store.set_meta(LSH_META, json.dumps(pinned, sort_keys=True))
    return LshTable(dim, int(pinned["bits"]), seed=int(pinned["seed"]))


def pin_lsh_settings(store: Store, bits: int, seed: int) -> None:
    """Pin ``bits`` and ``seed`` unless the store has pinned LSH settings already."""
    if store.get_meta(LSH_META) is None:  # processes starting together agree on the first
        store.set_meta_once(LSH_META, json.dumps({"bits": bits, "seed": seed}, sort_keys=True))


def join_existing(piece_ids: Sequence[str], keys: np.ndarray,
                  memories: Mapping[str, MemoryRecord], counts: dict[str, int], lsh: LshTable,
                  settings: MappingSettings) -> tuple[dict[str, list[str]], list[str]]:
    """Sequential updates: each new piece joins, among the existing memories of its LSH bucket
    that have room (fewer than ``capacity`` pieces), the one whose key is nearest to its own,
    if at least ``join_similarity``. A bucket holds any number of memories.
    (memory id -> joined piece ids, the pieces that joined none). ``counts`` is updated."""
    by_bucket: dict[int, list[str]] = {}
    for mid, rec in sorted(memories.items()):
        if rec.bucket is not None:
            by_bucket.setdefault(int(rec.bucket), []).append(mid)
    joined: dict[str, list[str]] = {}
    rest = []
    for pid, key, bucket in zip(piece_ids, keys, lsh.buckets(keys), strict=True):
        best, best_sim = None, settings.join_similarity
        for mid in by_bucket.get(int(bucket), []):
            if counts.get(mid, settings.capacity) >= settings.capacity:
                continue
            sim = float(key @ memories[mid].key)
            if sim >= best_sim:
                best, best_sim = mid, sim
        if best is None:
            rest.append(pid)
        else:
            joined.setdefault(best, []).append(pid)
            counts[best] += 1
    return joined, rest
