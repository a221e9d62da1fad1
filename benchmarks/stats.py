"""Two-sample tests in numpy (no scipy): Kolmogorov–Smirnov, Mann–Whitney U, and a permutation
test on the difference of means. Each returns a JSON-ready dict; p-values are two-sided."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def _kolmogorov_sf(lam: float) -> float:
    """P(K > lam) of the Kolmogorov distribution."""
    if lam < 1e-3:
        return 1.0
    k = np.arange(1, 101)
    return float(min(max(2 * np.sum((-1.0) ** (k - 1) * np.exp(-2 * k**2 * lam**2)), 0.0), 1.0))


def ks_statistic(x: Sequence[float], y: Sequence[float]) -> float:
    """Two-sample KS statistic ``max |F_x - F_y|`` over the pooled sample (ties handled)."""
    a, b = np.sort(np.asarray(x, float)), np.sort(np.asarray(y, float))
    pooled = np.concatenate([a, b])
    fa = np.searchsorted(a, pooled, side="right") / len(a)
    fb = np.searchsorted(b, pooled, side="right") / len(b)
    return float(np.max(np.abs(fa - fb)))


def ks_2samp(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """The KS statistic (largest gap of the two empirical CDFs) and its asymptotic p-value
    (with Stephens' small-sample correction, as in Numerical Recipes)."""
    d = ks_statistic(x, y)
    en = math.sqrt(len(x) * len(y) / (len(x) + len(y)))
    return {"statistic": d, "p_value": _kolmogorov_sf((en + 0.12 + 0.11 / en) * d)}


def _ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties getting their average rank."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    sorted_v = values[order]
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and sorted_v[j + 1] == sorted_v[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def mann_whitney_u(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """U of ``x`` (pairs where an ``x`` exceeds a ``y``, ties half), the normal approximation's
    p-value with tie and continuity corrections, and the common-language effect U / (n m)."""
    a, b = np.asarray(x, float), np.asarray(y, float)
    n, m = len(a), len(b)
    pooled = np.concatenate([a, b])
    ranks = _ranks(pooled)
    u = float(ranks[:n].sum() - n * (n + 1) / 2)
    _, counts = np.unique(pooled, return_counts=True)
    tie = float(np.sum(counts**3 - counts)) / ((n + m) * (n + m - 1)) if n + m > 1 else 0.0
    var = n * m / 12 * ((n + m + 1) - tie)
    if var <= 0:
        return {"statistic": u, "p_value": 1.0, "effect": u / (n * m)}
    z = (abs(u - n * m / 2) - 0.5) / math.sqrt(var)
    return {"statistic": u, "p_value": float(min(1.0, math.erfc(max(z, 0.0) / math.sqrt(2)))),
            "effect": u / (n * m)}


def permutation_test(x: Sequence[float], y: Sequence[float], n_permutations: int = 10_000,
                     seed: int = 0) -> dict[str, float]:
    """mean(x) - mean(y), and the share of random relabellings with a difference at least as
    large in absolute value (counting the observed one)."""
    a, b = np.asarray(x, float), np.asarray(y, float)
    pooled = np.concatenate([a, b])
    observed = float(a.mean() - b.mean())
    rng = np.random.default_rng(seed)
    perms = np.argsort(rng.random((n_permutations, len(pooled))), axis=1)
    shuffled = pooled[perms]
    diffs = shuffled[:, : len(a)].mean(1) - shuffled[:, len(a) :].mean(1)
    hits = int(np.sum(np.abs(diffs) >= abs(observed) - 1e-12))
    return {"statistic": observed, "p_value": (hits + 1) / (n_permutations + 1),
            "n_permutations": n_permutations}


def compare(x: Sequence[float], y: Sequence[float], seed: int = 0) -> dict[str, Any]:
    """All three tests of ``x`` against ``y``."""
    return {"ks": ks_2samp(x, y), "mann_whitney": mann_whitney_u(x, y),
            "permutation": permutation_test(x, y, seed=seed)}
