"""Search latency and recall@1 of the routing index against codebook size.

``memory_store.routing.index.KeyIndex`` over 1k / 10k / 100k keys, each kind (exact ``flat``,
``hnsw``, ``ivf``) with the store's default ``IndexSettings``, and the kind ``"auto"`` picks.
Latency is per single query (a request routes alone or in a small batch), on one FAISS
thread. Recall@1: the fraction of queries whose approximate nearest key is the exact one.

Two key sets:

- ``real-128``: real keys of the built-in model (width 128) for generated prompts, one per
  (invented entity, relation); queries are other phrasings of stored prompts (paraphrases);
- ``synthetic-768``: the large model's width; computing 100k real keys on an 87M model takes
  an hour on CPU, so keys are clustered random unit vectors (clusters of related facts) and each
  query is a stored key moved to cosine ~0.8 (as a paraphrase measures on the built-in model).
"""

from __future__ import annotations

import logging
import random
import time

import faiss
import numpy as np

from memory_store import Loka
from memory_store.config import IndexSettings
from memory_store.models.builtin import RELATION_TEMPLATES
from memory_store.routing.index import KeyIndex, index_kind

logger = logging.getLogger(__name__)

KINDS = ("flat", "hnsw", "ivf")
SWEEPS = {"hnsw": ("efSearch", (32, 64, 128, 256, 512)), "ivf": ("nprobe", (4, 8, 16, 32, 64))}
N_QUERIES = 300
_SYLLABLES = ("bra", "vel", "mor", "qui", "tan", "dor", "lis", "kar", "zen", "pol", "fen", "ros",
              "gal", "tir", "wen", "sha", "nol", "cré", "vas", "lum", "ord", "ith", "cal", "bex")


def _name(rng: random.Random) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4))).capitalize()


def _facts(n: int, rng: random.Random) -> list[tuple[str, int]]:
    """``n`` distinct (invented entity, relation index) pairs."""
    facts: dict[tuple[str, int], None] = {}
    while len(facts) < n:
        facts[(_name(rng), rng.randrange(len(RELATION_TEMPLATES)))] = None
    return list(facts)


def real_keys(loka: Loka, sizes: tuple[int, ...], seed: int = 0
              ) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Keys of ``max(sizes)`` generated prompts (canonical phrasing), and for each size the keys
    of N_QUERIES paraphrases (other phrasings) of prompts among the first ``size``."""
    rng = random.Random(seed)
    templates = list(RELATION_TEMPLATES.values())
    facts = _facts(max(sizes), rng)
    keys = loka.keys([templates[r][0].format(e=e) for e, r in facts])
    queries = {}
    for n in sizes:
        asked = rng.sample(facts[:n], min(N_QUERIES, n))
        queries[n] = loka.keys([templates[r][rng.randint(1, len(templates[r]) - 1)].format(e=e)
                                for e, r in asked])
    return keys, queries


def synthetic_keys(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Clustered unit keys (about 10 per cluster) and queries at cosine ~0.8 to a stored key."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 10), dim)).astype(np.float32)
    keys = centres[rng.integers(0, len(centres), n)]
    keys += 0.5 * rng.standard_normal((n, dim)).astype(np.float32)
    keys /= np.linalg.norm(keys, axis=1, keepdims=True)
    queries = keys[rng.integers(0, n, N_QUERIES)]
    queries = queries + (0.75 / np.sqrt(dim)) * rng.standard_normal(queries.shape).astype(
        np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return keys, queries.astype(np.float32)


def measure_index(keys: np.ndarray, queries: np.ndarray, settings: IndexSettings,
                  sweep: bool = False) -> dict:
    """Build every kind on ``keys``; single-query latency and recall@1 against ``flat``; with
    ``sweep``, also at other values of HNSW's ``efSearch`` and IVF's ``nprobe``."""
    ids = [f"k{i}" for i in range(len(keys))]
    out: dict = {"auto_kind": index_kind(settings, len(keys))}
    exact: list[str | None] = []
    for kind in KINDS:
        t = time.perf_counter()
        index = KeyIndex(keys, ids, settings.model_copy(update={"kind": kind}))
        build = time.perf_counter() - t
        top, times = _search(index, queries)
        if kind == "flat":
            exact = top
        out[kind] = {"build_s": round(build, 2), **_summary(top, times, exact)}
        logger.info("search %d keys (d=%d) %s: %.3f ms, recall@1 %.3f, build %.1f s",
                    len(keys), keys.shape[1], kind, out[kind]["search_ms"],
                    out[kind]["recall_at_1"], build)
        if sweep and kind in SWEEPS:  # the speed/recall trade-off of the search-time knob
            knob, values = SWEEPS[kind]
            out[kind]["sweep"] = {}
            for value in values:
                setattr(_knob_owner(index, kind), knob, value)
                out[kind]["sweep"][value] = _summary(*_search(index, queries), exact)
    return out


def _knob_owner(index: KeyIndex, kind: str):
    return index.index.hnsw if kind == "hnsw" else index.index


def _search(index: KeyIndex, queries: np.ndarray) -> tuple[list[str | None], list[float]]:
    for q in queries[:20]:  # warm-up
        index.search(q[None], 1)
    top, times = [], []
    for q in queries:
        t = time.perf_counter()
        _, names = index.search(q[None], 1)
        times.append(time.perf_counter() - t)
        top.append(names[0][0])
    return top, times


def _summary(top: list[str | None], times: list[float], exact: list[str | None]) -> dict:
    recall = sum(a == b for a, b in zip(top, exact, strict=True)) / len(top)
    return {"search_ms": round(1000 * float(np.median(times)), 4),
            "search_p95_ms": round(1000 * float(np.percentile(times, 95)), 4),
            "recall_at_1": round(recall, 4)}


def measure(loka: Loka, sizes: tuple[int, ...], synthetic_dim: int | None) -> dict:
    """Both key sets at every size (the synthetic set only if ``synthetic_dim``)."""
    faiss.omp_set_num_threads(1)
    settings = loka.config.index
    out: dict = {"settings": settings.model_dump(), "n_queries": N_QUERIES, "sets": {}}
    started = time.perf_counter()
    keys, queries = real_keys(loka, sizes)
    logger.info("computed %d real keys in %.1f s", len(keys), time.perf_counter() - started)
    name = f"real-{keys.shape[1]}"
    out["sets"][name] = {n: measure_index(keys[:n], queries[n], settings, n == max(sizes))
                         for n in sizes}
    if synthetic_dim:
        name = f"synthetic-{synthetic_dim}"
        out["sets"][name] = {}
        for n in sizes:
            keys, queries_ = synthetic_keys(n, synthetic_dim)
            out["sets"][name][n] = measure_index(keys, queries_, settings, n == max(sizes))
    return out
