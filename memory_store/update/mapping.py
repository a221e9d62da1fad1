"""Similarity-aware mapping of knowledge pieces to memories.

- ``capacity_kmeans``: a batch of n keys -> K = ceil(n / capacity) clusters, none larger than
  ``capacity`` (spherical k-means with a capacity-bounded greedy assignment).
- ``LshTable``: random-hyperplane LSH for sequential updates; bucket -> memory id.
"""

from __future__ import annotations

import math

import numpy as np


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
