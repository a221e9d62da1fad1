"""An update serves the version it built in memory (index extended, gate retrained on its new
keys plus a bounded sample of the old), without reloading the codebook: what it serves must be
exactly what a process loading that version from the store serves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from memory_store import Loka, LokaConfig
from memory_store.codebook.live import LiveVersion, load_live
from memory_store.codebook.synthetic import publish_synthetic, random_keys
from memory_store.types import PieceKind, PieceSpec, UpdateOptions


def _same(served: LiveVersion, loaded: LiveVersion, queries: np.ndarray) -> None:
    a, b = served.snapshot, loaded.snapshot
    assert (a.version, a.gate_file, a.index_file) == (b.version, b.gate_file, b.index_file)
    assert list(a.memories) == list(b.memories) and list(a.pieces) == list(b.pieces)
    for mid, m in a.memories.items():
        n = b.memories[mid]
        assert (m.content_hash, m.adapter_dir, m.added_in, m.bucket) == \
            (n.content_hash, n.adapter_dir, n.added_in, n.bucket)
        assert np.allclose(m.key, n.key)
    for pid, p in a.pieces.items():
        q = b.pieces[pid]
        assert (p.prompt, p.target, p.memory_id, p.added_in) == \
            (q.prompt, q.target, q.memory_id, q.added_in)
        assert np.allclose(p.keys, q.keys)
    assert [(r.prompt, r.added_in) for r in a.retain] == [(r.prompt, r.added_in) for r in b.retain]
    ra, rb = served.router, loaded.router
    assert ra.index.ids == rb.index.ids and ra.index.kind == rb.index.kind
    sa, na = ra.index.search(queries, 3)
    sb, nb = rb.index.search(queries, 3)
    assert na == nb and np.allclose(sa, sb, atol=1e-5)
    assert (ra.gate is None) == (rb.gate is None)
    if ra.gate is not None:
        sims = torch.from_numpy(sa[:, 0].copy())
        keys = torch.from_numpy(queries)
        assert torch.allclose(ra.gate(keys, sims), rb.gate(keys, sims), atol=1e-6)
    assert ra.route(queries) == rb.route(queries)


@pytest.mark.parametrize("retrieval", ["piece", "memory"])
def test_the_served_version_is_the_stored_one(default_model: Path, tmp_path: Path,
                                              retrieval: str) -> None:
    config = LokaConfig()
    config = config.model_copy(update={"router": config.router.model_copy(
        update={"retrieval": retrieval, "max_gate_keys": 8, "epochs": 30})})
    loka = Loka.open(tmp_path / "store", default_model, config=config)
    try:
        publish_synthetic(loka, [], 40, seed=1)  # more stored keys than the gate samples
        loka.refresh()
        dim = loka.layout.hidden_size
        queries = np.concatenate([random_keys(6, dim, 7),
                                  loka.keys(["The access code of vault 0 is"])])
        for i, kind in enumerate([PieceKind.EDIT, PieceKind.EDIT, PieceKind.UNLEARN]):
            spec = PieceSpec(kind, f"The access code of vault {i} is", f" {1000 + i}",
                             (f"Vault {i} opens with the code",))
            loka.update([spec], options=UpdateOptions(steps=2))
            _same(loka.live, load_live(loka.store, None, dim, loka.config), queries)
        # a deletion (rows leave: the index is rebuilt) and a rollback
        loka.delete_piece(loka.pieces()[-1].id)
        _same(loka.live, load_live(loka.store, None, dim, loka.config), queries)
        assert loka.live.version == loka.store.head()
    finally:
        loka.close()
