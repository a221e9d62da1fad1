"""``loka store check``: verify a store without changing it.

Checks SQLite's own integrity, that the head names a published version, and for every version
(or only the head): each memory's adapter folder exists and its weights hash to the memory's
content hash, each piece names a live memory, and the version's FAISS index holds as many keys
as its metadata says and its gate file loads.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from memory_store.errors import LokaError
from memory_store.index import KeyIndex
from memory_store.lora import adapter_hash, load_adapter
from memory_store.store import DB_NAME, Store


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


def check_store(root: Path, dim: int | None = None, all_versions: bool = False) -> CheckReport:
    """Verify the store at ``root``; ``dim`` (the key width) is read from the data if None."""
    root = Path(root)
    report = CheckReport(str(root))
    if not (root / DB_NAME).is_file():
        report.problems.append(f"no {DB_NAME} in {root}: not a LOKA store")
        return report
    try:
        with sqlite3.connect(f"file:{root / DB_NAME}?mode=ro", uri=True) as db:
            result = db.execute("PRAGMA integrity_check").fetchone()[0]
            if result != "ok":
                report.problems.append(f"sqlite integrity_check: {result}")
                return report
            if dim is None:
                row = db.execute("SELECT length(key) FROM memories LIMIT 1").fetchone()
                dim = (row[0] // 4) if row else 1
    except sqlite3.Error as exc:
        report.problems.append(f"cannot read {DB_NAME}: {exc}")
        return report
    try:
        store = Store(root)
    except LokaError as exc:
        report.problems.append(exc.message)
        return report
    try:
        _check_versions(store, dim, all_versions, report)
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
    hashed: dict[str, str] = {}
    for version in versions:
        snap = store.snapshot(version, dim)
        report.versions_checked.append(version)
        for m in snap.memories.values():
            path = store.root / m.adapter_dir
            if m.adapter_dir not in hashed:
                try:
                    hashed[m.adapter_dir] = adapter_hash(load_adapter(path))
                    report.adapters_checked += 1
                except Exception as exc:  # any unreadable file is a finding, not a crash
                    hashed[m.adapter_dir] = f"unreadable: {exc}"
            if hashed[m.adapter_dir] != m.content_hash:
                report.problems.append(f"v{version}: memory {m.id} adapter {m.adapter_dir}: "
                                       f"hash {hashed[m.adapter_dir]} != {m.content_hash}")
        for p in snap.pieces.values():
            if p.memory_id not in snap.memories:
                report.problems.append(f"v{version}: piece {p.id} names missing memory "
                                       f"{p.memory_id}")
        n_keys = sum(len(p.keys) for p in snap.pieces.values())
        _check_file(store.root, snap.index_file, f"v{version} index", report,
                    lambda path, n=n_keys, s=snap: _index_count(path, n, len(s.memories)))
        _check_file(store.root, snap.gate_file, f"v{version} gate", report, _gate_loads)


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
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    return None if tensors else "empty"
