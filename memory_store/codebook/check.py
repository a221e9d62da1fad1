"""``loka store check``: verify a store without changing it.

Checks SQLite's own integrity, that the head names a published version, and for every version
(or only the head): each memory's adapter folder exists and its weights hash to the memory's
content hash, each piece names a live memory, and the version's FAISS index holds as many keys
as its metadata says and its gate file loads.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from safetensors.torch import load_file

from memory_store.codebook.db import redact_url
from memory_store.codebook.store import DB_NAME, Store, connect_read_only
from memory_store.errors import LokaError
from memory_store.lora.weights import adapter_hash, load_adapter
from memory_store.routing.index import KeyIndex

ADAPTER_WEIGHTS = "adapter_model.safetensors"


@dataclass
class CheckReport:
    store: str
    head: int = 0
    versions_checked: list[int] = field(default_factory=list)
    adapters_checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_store(root: Path, dim: int | None = None, all_versions: bool = False,
                database_url: str | None = None) -> CheckReport:
    """Verify the store at ``root``; ``dim`` (the key width) is read from the data if None.
    With ``database_url`` (default ``LOKA_DATABASE_URL``) the tables are in PostgreSQL and
    ``root`` holds the files."""
    root = Path(root)
    if database_url is None:
        database_url = os.environ.get("LOKA_DATABASE_URL") or None
    if database_url:
        return _check_postgres(root, dim, all_versions, database_url)
    report = CheckReport(str(root))
    if not (root / DB_NAME).is_file():
        report.problems.append(f"no {DB_NAME} in {root}: not a LOKA store")
        return report
    try:
        db = connect_read_only(root)
    except LokaError as exc:
        report.problems.append(exc.message)
        return report
    try:
        result = db.execute("PRAGMA integrity_check").fetchone()[0]
        if result != "ok":
            report.problems.append(f"{DB_NAME}: sqlite integrity_check: {result}")
            return report
        if dim is None:
            row = db.execute("SELECT length(key) FROM memories LIMIT 1").fetchone()
            dim = (row[0] // 4) if row else 1
    except sqlite3.Error as exc:
        report.problems.append(f"cannot read {DB_NAME}: {exc}")
        return report
    finally:
        db.close()
    try:
        store = Store(root, read_only=True)
    except LokaError as exc:
        report.problems.append(exc.message)
        return report
    try:
        _check_versions(store, dim, all_versions, report)
    except LokaError as exc:
        report.problems.append(exc.message)
    finally:
        store.close()
    return report


def _check_postgres(root: Path, dim: int | None, all_versions: bool, url: str) -> CheckReport:
    report = CheckReport(f"{root} + {redact_url(url)}")
    try:
        store = Store(root, read_only=True, database_url=url)
    except LokaError as exc:
        report.problems.append(exc.message)
        return report
    try:
        if dim is None:
            rows = store.db.query("SELECT octet_length(key) FROM memories LIMIT 1")
            dim = (rows[0][0] // 4) if rows else 1
        _check_versions(store, dim, all_versions, report)
    except LokaError as exc:
        report.problems.append(exc.message)
    except store.db.errors() as exc:
        report.problems.append(f"cannot read the database: {exc}")
    finally:
        store.close()
    return report


def _check_versions(store: Store, dim: int, all_versions: bool, report: CheckReport) -> None:
    report.head = store.head()
    published = [v.version for v in store.versions()]
    if report.head and report.head not in published:
        report.problems.append(f"head names version {report.head}, which was never published")
        return
    versions = published if all_versions else ([report.head] if report.head else [])
    hashed: dict[str, str | None] = {}  # adapter folder -> hash, None if unreadable
    for version in versions:
        snap = store.snapshot(version, dim)
        report.versions_checked.append(version)
        for m in snap.memories.values():
            if m.adapter_dir not in hashed:
                hashed[m.adapter_dir] = _adapter_hash(store.root, m.adapter_dir, version, m.id,
                                                      report)
            found = hashed[m.adapter_dir]
            if found is not None and found != m.content_hash:
                report.problems.append(
                    f"v{version}: memory {m.id}: {m.adapter_dir}/{ADAPTER_WEIGHTS} does not "
                    f"match the memory's content hash ({found} != {m.content_hash})")
        for p in snap.pieces.values():
            if p.memory_id not in snap.memories:
                report.problems.append(f"v{version}: piece {p.id} names missing memory "
                                       f"{p.memory_id}")
        n_keys = sum(len(p.keys) for p in snap.pieces.values())
        _check_file(store.root, snap.index_file, f"v{version} index", report,
                    lambda path, n=n_keys, s=snap: _index_count(path, n, len(s.memories)))
        _check_file(store.root, snap.gate_file, f"v{version} gate", report, _gate_loads)


def _adapter_hash(root: Path, adapter_dir: str, version: int, memory_id: str,
                  report: CheckReport) -> str | None:
    """The content hash of an adapter folder; None (and a problem) if it cannot be read."""
    path = root / adapter_dir
    if not path.is_dir():
        report.problems.append(f"v{version}: memory {memory_id}: missing adapter folder "
                               f"{adapter_dir}")
        return None
    try:
        digest = adapter_hash(load_adapter(path))
    except Exception as exc:  # any unreadable file is a finding, not a crash
        report.problems.append(f"v{version}: memory {memory_id}: adapter {adapter_dir} is "
                               f"unreadable ({type(exc).__name__}: {exc})")
        return None
    report.adapters_checked += 1
    return digest


def _check_file(root: Path, name: str | None, what: str, report: CheckReport, verify) -> None:
    if name is None:
        return
    path = root / name
    if not path.is_file():
        report.problems.append(f"{what}: missing file {name}")
        return
    try:
        problem = verify(path)
    except Exception as exc:  # corrupted file
        problem = f"unreadable ({exc})"
    if problem:
        report.problems.append(f"{what} {name}: {problem}")


def _index_count(path: Path, n_piece_keys: int, n_memories: int) -> str | None:
    count = KeyIndex.read_count(path)
    if count not in (n_piece_keys, n_memories):
        return f"holds {count} keys, metadata has {n_piece_keys} piece keys / {n_memories} memories"
    return None


def _gate_loads(path: Path) -> str | None:
    tensors = load_file(str(path))
    return None if tensors else "empty"
