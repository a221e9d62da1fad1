"""Synthetic codebooks for load: memories written straight to a store (the serving benchmark
and the performance tests).

Training thousands of real memories would take hours on CPU, and serving speed does not depend
on what a memory has learned, only on its shape. So the throughput, memory and routing
measurements use *synthetic* memories: random LoRA weights of the configured shape (A as PEFT
initialises it, B random: small by default, large enough in tests to change outputs), one piece per
memory whose key is the real key of a real prompt (so ``memory="auto"`` routes that prompt to
its own memory) or a random unit vector (for codebooks larger than the prompt set), and a
router gate trained on those keys as an update would train it. The update-latency measurement
uses real updates.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from memory_store.codebook.store import MemoryRecord, PieceRecord
from memory_store.engine import Loka
from memory_store.ids import memory_id, piece_id
from memory_store.lora.weights import AdapterWeights, adapter_hash, init_adapter, save_adapter
from memory_store.models.access import ModelLayout
from memory_store.routing.gate import save_gate, train_gate
from memory_store.routing.index import retrieval_index
from memory_store.types import PieceKind

logger = logging.getLogger(__name__)

B_STD = 0.02  # std of the random B matrices: outputs change, generation stays sensible


def random_adapter(layout: ModelLayout, rank: int, alpha: float, seed: int,
                   b_std: float = B_STD) -> AdapterWeights:
    """A LoRA adapter of the store's shape with random A and B."""
    weights = init_adapter(layout, rank, alpha, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    for name, b in weights.b.items():
        weights.b[name] = torch.randn(b.shape, generator=gen) * b_std
    return weights


def random_keys(n: int, dim: int, seed: int) -> np.ndarray:
    """(n, dim) random unit vectors."""
    keys = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return keys / np.linalg.norm(keys, axis=1, keepdims=True)


def publish_synthetic(loka: Loka, prompts: list[str], n_memories: int, seed: int = 0,
                      gate: bool = True, b_std: float = B_STD) -> list[tuple[str, str]]:
    """Publish a codebook of ``n_memories`` synthetic memories on ``loka``'s store.

    Memory i holds one piece: ``prompts[i]`` with its real key while prompts last, then a
    placeholder prompt with a random key. Returns (memory id, adapter folder relative to the
    store) in order: memory i serves ``prompts[i]``. The caller reopens the store to serve the
    new version."""
    started = time.perf_counter()
    layout, cfg, store = loka.layout, loka.config, loka.store
    n_real = min(len(prompts), n_memories)
    keys = np.concatenate([loka.keys(prompts[:n_real]),
                           random_keys(n_memories - n_real, layout.hidden_size, seed)])
    texts = prompts[:n_real] + [f"synthetic prompt {i}" for i in range(n_real, n_memories)]
    mem_ids = [memory_id(n) for n in store.next_ids("memory", n_memories)]
    piece_ids = [piece_id(n) for n in store.next_ids("piece", n_memories)]
    now = time.time()
    memories, pieces = [], []
    for i, (mid, pid, key, text) in enumerate(zip(mem_ids, piece_ids, keys, texts, strict=True)):
        weights = random_adapter(layout, cfg.lora.rank, cfg.lora.alpha, seed * 1_000_003 + i,
                                 b_std)
        digest = adapter_hash(weights)
        adapter_dir = f"adapters/{mid}/{digest}"
        save_adapter(weights, layout, loka.model_name, store.root / adapter_dir, durable=False)
        memories.append(MemoryRecord(mid, "edit", digest, adapter_dir, key, None, None,
                                     {"synthetic": 1.0}, None, now))
        pieces.append(PieceRecord(pid, PieceKind.EDIT, text, " synthetic", (), mid, key[None],
                                  now))
    base = store.head()
    index = retrieval_index(memories, pieces, cfg.router.retrieval, cfg.index,
                            layout.hidden_size)
    index_file = store.put_file("index", "faiss", index.save)
    gate_file = None
    if gate:
        # as an update does: background prompts that are stored (or nearly) are no negatives
        bg = loka.background_keys()
        neg = bg[(bg @ keys.T).max(1) < cfg.router.exclude_similarity]
        # the served prompts are the stored ones: their best similarity is their own key's
        # (an update, whose pieces carry paraphrases, trains on leave-one-out similarities)
        pos_sims = index.search(keys, 1)[0][:, 0]
        neg_sims = index.search(neg, 1)[0][:, 0]
        trained = train_gate(keys, pos_sims.astype(np.float32), neg, neg_sims, cfg.router)
        gate_file = store.put_file("gate", "safetensors",
                                   lambda path: save_gate(trained, path))
    store.publish(base, memories, pieces, [], gate_file=gate_file, index_file=index_file,
                  reason=f"synthetic codebook of {n_memories} memories")
    logger.info("published %d synthetic memories in %.1f s", n_memories,
                time.perf_counter() - started)
    return [(m.id, m.adapter_dir) for m in memories]
