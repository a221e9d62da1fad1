"""The codebook's database on both engines (SQLite and a real PostgreSQL): migrations, the
compare-and-swap publish, ids never handed out twice, and a job's completion committed with its
version only while its worker holds the lease."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from memory_store.codebook.store import (
    SCHEMA_VERSION,
    MemoryRecord,
    PieceRecord,
    Store,
)
from memory_store.errors import HeadMoved, LeaseLost
from memory_store.types import PieceKind
from service.jobs import JobQueue

DIM = 4


def memory(mid: str) -> MemoryRecord:
    key = np.eye(DIM, dtype=np.float32)[int(mid[-1]) % DIM]
    return MemoryRecord(mid, "edit", f"hash-{mid}", f"adapters/{mid}/x", key, None, None, {},
                        None, time.time())


def piece(pid: str, mid: str) -> PieceRecord:
    keys = np.eye(DIM, dtype=np.float32)[[int(pid[-1]) % DIM]]
    return PieceRecord(pid, PieceKind.EDIT, f"prompt {pid}", " target", (), mid, keys,
                       time.time())


def test_migrations_and_compare_and_swap(tmp_path: Path,
                                         database_url: Callable[[], str | None]) -> None:
    url = database_url()
    a = Store(tmp_path / "store", database_url=url)
    b = Store(tmp_path / "store", database_url=url)  # a second process on the same codebook
    try:
        assert a.db.query("SELECT version FROM schema_version")[0][0] == SCHEMA_VERSION
        assert a.head() == 0
        v1 = a.publish(0, [memory("mem_000001")], [piece("pc_000001", "mem_000001")], [],
                       gate_file=None, index_file=None, reason="a")
        assert v1 == 1 and b.head() == 1
        # b planned on version 0 too: its publish must fail and write nothing
        with pytest.raises(HeadMoved) as moved:
            b.publish(0, [memory("mem_000002")], [piece("pc_000002", "mem_000002")], [],
                      gate_file=None, index_file=None, reason="b")
        assert (moved.value.base, moved.value.head) == (0, 1)
        assert [v.version for v in b.versions()] == [1]
        # re-planned on the head, b keeps a's piece and adds its own
        snap = b.snapshot(None, DIM)
        v2 = b.publish(snap.version, [*snap.memories.values(), memory("mem_000002")],
                       [*snap.pieces.values(), piece("pc_000002", "mem_000002")], [],
                       gate_file=None, index_file=None, reason="b")
        assert v2 == 2
        assert sorted(a.snapshot(None, DIM).pieces) == ["pc_000001", "pc_000002"]
        assert sorted(a.snapshot(1, DIM).pieces) == ["pc_000001"]  # old versions stay
        # ids reserved by two processes never overlap
        ids = a.next_ids("piece", 3) + b.next_ids("piece", 2) + a.next_ids("piece", 1)
        assert len(set(ids)) == 6
        # reopening runs no migration twice
        Store(tmp_path / "store", database_url=url).close()
        assert a.db.query("SELECT version FROM schema_version")[0][0] == SCHEMA_VERSION
    finally:
        a.close()
        b.close()


def test_content_addressed_files(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    try:
        first = store.put_file("gate", "bin", lambda p: p.write_bytes(b"weights"))
        again = store.put_file("gate", "bin", lambda p: p.write_bytes(b"weights"))
        other = store.put_file("gate", "bin", lambda p: p.write_bytes(b"other"))
        assert first == again != other
        assert (store.root / first).read_bytes() == b"weights"
        assert not [p for p in (store.root / "versions").iterdir() if p.name.startswith(".")]
    finally:
        store.close()


def test_a_job_taken_over_after_its_lease_publishes_once(
        tmp_path: Path, database_url: Callable[[], str | None]) -> None:
    """Worker A stalls past its lease; worker B takes the job over. A's publish (with the
    job's completion) must fail and leave nothing; B's succeeds: the job takes effect once."""
    url = database_url()
    store = Store(tmp_path / "store", database_url=url)
    a = JobQueue(store, None, lease_s=0.2)
    b = JobQueue(store, None, lease_s=30.0)
    try:
        job = a.submit("update", {"pieces": [], "retain": [], "options": {}})
        claimed = a._claim()
        assert claimed is not None and claimed.id == job.id
        assert b._claim() is None  # held by A
        time.sleep(0.3)  # A's lease expires (no heartbeat: A is stalled)
        taken = b._claim()
        assert taken is not None and taken.id == job.id and taken.attempts == 2

        def done(queue: JobQueue) -> Callable[[int], list]:
            return lambda version: [(
                "UPDATE service_jobs SET status='succeeded', result=? WHERE id=? "
                "AND lease_owner=? AND status='running'", (str(version), job.id, queue.owner))]

        with pytest.raises(LeaseLost):
            store.publish(0, [memory("mem_000001")], [piece("pc_000001", "mem_000001")], [],
                          gate_file=None, index_file=None, reason="A", extra_sql=done(a))
        assert store.head() == 0 and a.get(job.id).status == "running"
        v = store.publish(0, [memory("mem_000001")], [piece("pc_000001", "mem_000001")], [],
                          gate_file=None, index_file=None, reason="B", extra_sql=done(b))
        assert v == 1 and b.get(job.id).status == "succeeded"
        assert [x.reason for x in store.versions()] == ["B"]
    finally:
        a.stop()
        b.stop()
        store.close()
