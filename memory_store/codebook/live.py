"""One published codebook version, fully loaded: its snapshot and its router.

A ``LiveVersion`` is immutable: readers take the engine's current one and use it for a whole
request (or batch) while a writer builds and publishes the next.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from memory_store.codebook.store import MemoryRecord, PieceRecord, Snapshot, Store
from memory_store.config import LokaConfig
from memory_store.errors import NotFound, StoreError
from memory_store.ids import is_memory_id, is_piece_id
from memory_store.routing.gate import load_gate
from memory_store.routing.index import KeyIndex, retrieval_rows
from memory_store.routing.router import Router
from memory_store.types import MemoryInfo, Piece

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LiveVersion:
    snapshot: Snapshot
    router: Router

    @property
    def version(self) -> int:
        return self.snapshot.version

    def memory_record(self, memory_id: str) -> MemoryRecord:
        """The stored memory ``memory_id``; NotFound if this version has none of that id."""
        if not is_memory_id(memory_id) or memory_id not in self.snapshot.memories:
            raise NotFound(f"no memory {memory_id!r} in codebook version {self.version}",
                           field="memory_id")
        return self.snapshot.memories[memory_id]

    def memory_info(self, memory_id: str) -> MemoryInfo:
        m = self.memory_record(memory_id)
        pieces = tuple(p.id for p in self.snapshot.pieces.values() if p.memory_id == m.id)
        return MemoryInfo(m.id, m.kind, m.content_hash, pieces, m.conflict, m.key_stats,
                          m.bucket, m.created_at, m.added_in, m.train_loss)

    def memories(self) -> list[MemoryInfo]:
        return [self.memory_info(mid) for mid in self.snapshot.memories]

    def piece(self, piece_id: str) -> Piece:
        if not is_piece_id(piece_id) or piece_id not in self.snapshot.pieces:
            raise NotFound(f"no knowledge piece {piece_id!r}", field="piece_id")
        return _piece(self.snapshot.pieces[piece_id])

    def pieces(self) -> list[Piece]:
        return [_piece(p) for p in self.snapshot.pieces.values()]


def _piece(p: PieceRecord) -> Piece:
    return Piece(p.id, p.kind, p.prompt, p.target, p.paraphrases, p.memory_id, p.created_at,
                 p.added_in)


def load_live(store: Store, version: int | None, dim: int, config: LokaConfig) -> LiveVersion:
    """Load ``version`` (None: the head) with its index and gate; StoreError naming what is
    missing or unreadable."""
    snap = store.snapshot(version, dim)
    index = index_of(store, snap, dim, config)
    gate = None
    if snap.gate_file and config.router.enabled:
        try:
            gate = load_gate(store.root / snap.gate_file, dim, config.router.hidden)
        except Exception as exc:
            raise StoreError(f"router weights {snap.gate_file} of version {snap.version} "
                             f"are unreadable ({exc}); run `loka store check`") from exc
    missing = [m.adapter_dir for m in snap.memories.values()
               if not (store.root / m.adapter_dir).is_dir()]
    if missing:
        raise StoreError(f"version {snap.version} names {len(missing)} missing adapter "
                         f"folders (first: {missing[0]}); run `loka store check`")
    return LiveVersion(snap, Router(index, gate, config.router))


def index_of(store: Store, snap, dim: int, config: LokaConfig) -> KeyIndex:
    """The version's FAISS index file if it is present and matches the snapshot (same keys,
    sampled); else rebuilt from the keys."""
    ids, keys = retrieval_rows(snap.memories.values(), snap.pieces.values(),
                               config.router.retrieval, dim)
    if snap.index_file:
        loaded = KeyIndex.load(store.root / snap.index_file, ids, keys, config.index)
        if loaded is not None:
            return loaded
        logger.warning("index file %s of version %d is missing or does not match; rebuilding "
                       "it", snap.index_file, snap.version)
    return KeyIndex(keys, ids, config.index)
