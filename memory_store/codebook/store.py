"""The codebook on disk: a directory with SQLite metadata and immutable files.

Layout::

    store/
      loka.sqlite                  pieces, memories, retain prompts, versions, head (WAL mode)
      adapters/<memory id>/<hash>/ one PEFT adapter folder per memory content (immutable)
      versions/v<N>.faiss          the FAISS index of version N's memory keys
      versions/v<N>.gate           the router weights of version N (safetensors)

Rows carry ``added_in`` / ``removed_in`` versions, so version N is every row with
``added_in <= N < removed_in``. Publishing writes the files first (temp file, fsync, rename) and
then, in ONE SQLite transaction, closes and opens rows, inserts the version and moves the head:
a reader sees the old version or the new one, never a mixture, and a crash before the commit
leaves the previous version intact (its orphan files are harmless).

Opening checks the store before anything is served from it: the directory must take a real
write (a read-only file system, a permission problem or a full disk is named as such), and
SQLite's ``quick_check`` must pass. ``Store(root, read_only=True)`` opens without writing
(``loka store check`` on a read-only copy).

Fault injection (tests only; never set in production): ``LOKA_FAULT`` names a point inside
``publish`` where the process misbehaves, so that crash tests can kill a real server there.
``before_commit`` exits with status 70 before the COMMIT; ``sleep_before_commit:<s>`` and
``sleep_after_commit:<s>`` log a ``LOKA_FAULT <point> version <N>`` line and sleep ``s`` seconds
just before / just after the COMMIT (a test sends SIGKILL when it sees the line).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from memory_store.errors import NotFound, StoreError
from memory_store.types import ConflictDecision, PieceKind, VersionInfo

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DB_NAME = "loka.sqlite"
# written, fsynced and removed at open: a publish needs a few pages of WAL and adapter files
_PROBE_BYTES = 64 * 1024
_PROBE_NAME = ".loka-write-check"
# an SQL statement and its parameters, run by ``publish`` inside the publishing transaction
SqlStatement = tuple[str, Sequence[object]]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS blobs (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS versions (
    version INTEGER PRIMARY KEY, created_at REAL NOT NULL, reason TEXT NOT NULL,
    gate_file TEXT, index_file TEXT, n_memories INTEGER NOT NULL, n_pieces INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS head (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS memories (
    row INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL, kind TEXT NOT NULL,
    content_hash TEXT NOT NULL, adapter_dir TEXT NOT NULL, key BLOB NOT NULL, bucket INTEGER,
    conflict TEXT, key_stats TEXT NOT NULL, train_loss REAL, created_at REAL NOT NULL,
    added_in INTEGER NOT NULL, removed_in INTEGER);
CREATE TABLE IF NOT EXISTS pieces (
    row INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL, kind TEXT NOT NULL,
    prompt TEXT NOT NULL, target TEXT NOT NULL, paraphrases TEXT NOT NULL,
    memory_id TEXT NOT NULL, keys BLOB NOT NULL, created_at REAL NOT NULL,
    added_in INTEGER NOT NULL, removed_in INTEGER);
CREATE TABLE IF NOT EXISTS retain (
    row INTEGER PRIMARY KEY AUTOINCREMENT, prompt TEXT NOT NULL, target TEXT NOT NULL,
    key BLOB NOT NULL, added_in INTEGER NOT NULL, removed_in INTEGER);
CREATE INDEX IF NOT EXISTS memories_live ON memories (removed_in, id);
CREATE INDEX IF NOT EXISTS pieces_live ON pieces (removed_in, id);
CREATE INDEX IF NOT EXISTS retain_live ON retain (removed_in);
"""


@dataclass(frozen=True)
class MemoryRecord:
    id: str
    kind: str
    content_hash: str
    adapter_dir: str  # relative to the store
    key: np.ndarray  # (d,) unit vector
    bucket: int | None
    conflict: ConflictDecision | None
    key_stats: dict[str, float]
    train_loss: float | None
    created_at: float
    added_in: int = 0


@dataclass(frozen=True)
class PieceRecord:
    id: str
    kind: PieceKind
    prompt: str
    target: str
    paraphrases: tuple[str, ...]
    memory_id: str
    keys: np.ndarray  # (1 + n_paraphrases, d): the prompt's key first
    created_at: float
    added_in: int = 0


@dataclass(frozen=True)
class RetainRecord:
    prompt: str
    target: str
    key: np.ndarray
    added_in: int = 0


@dataclass(frozen=True)
class Snapshot:
    version: int
    memories: dict[str, MemoryRecord] = field(default_factory=dict)
    pieces: dict[str, PieceRecord] = field(default_factory=dict)
    retain: tuple[RetainRecord, ...] = ()
    gate_file: str | None = None
    index_file: str | None = None


def _blob(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a, dtype=np.float32).tobytes()


def _unblob(b: bytes, dim: int) -> np.ndarray:
    return np.frombuffer(b, dtype=np.float32).reshape(-1, dim).copy()


class Store:
    """SQLite metadata + immutable files. Thread-safe; one writer at a time."""

    def __init__(self, root: Path, *, read_only: bool = False) -> None:
        self.root = Path(root)
        self.read_only = read_only
        self._lock = threading.RLock()
        if read_only:
            self._db = connect_read_only(self.root)
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            (self.root / "adapters").mkdir(exist_ok=True)
            (self.root / "versions").mkdir(exist_ok=True)
        except OSError as exc:
            raise StoreError(unwritable_reason(self.root, exc)) from exc
        check_writable(self.root)
        with _sqlite_errors(self.root, "open"):
            self._db = sqlite3.connect(self.root / DB_NAME, check_same_thread=False,
                                       isolation_level=None, timeout=30.0)
        try:
            self._open_schema()
        except BaseException:
            self._db.close()
            raise

    def _open_schema(self) -> None:
        """WAL mode, SQLite's own quick check, the tables and the head row."""
        with _sqlite_errors(self.root, "open"):
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            found = self._db.execute("PRAGMA quick_check").fetchone()[0]
            if found != "ok":
                raise StoreError(f"store database {self.db_path} is corrupted "
                                 f"({' '.join(found.split())}); restore it from a backup "
                                 "(`loka store check` lists the problems)")
            self._db.executescript(_SCHEMA)
            if self.get_meta("schema_version") is None:
                self.set_meta("schema_version", str(SCHEMA_VERSION))
            if self._db.execute("SELECT COUNT(*) FROM head").fetchone()[0] == 0:
                self._db.execute("INSERT INTO head (id, version) VALUES (1, 0)")

    @property
    def db_path(self) -> Path:
        return self.root / DB_NAME

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------ meta and counters
    def get_meta(self, key: str) -> str | None:
        with self._lock, _sqlite_errors(self.root, "read"):
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                             (key, value))

    def get_blob(self, key: str) -> bytes | None:
        with self._lock, _sqlite_errors(self.root, "read"):
            row = self._db.execute("SELECT value FROM blobs WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_blob(self, key: str, value: bytes) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO blobs (key, value) VALUES (?, ?)",
                             (key, value))

    def next_ids(self, name: str, count: int) -> list[int]:
        """Reserve ``count`` ids; never reused, even after a rollback."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
            start = (row[0] if row else 0) + 1
            self._db.execute("INSERT OR REPLACE INTO counters (name, value) VALUES (?, ?)",
                             (name, start + count - 1))
            self._db.execute("COMMIT")
        return list(range(start, start + count))

    # ------------------------------------------------------------------ reading
    def head(self) -> int:
        with self._lock, _sqlite_errors(self.root, "read"):
            return int(self._db.execute("SELECT version FROM head WHERE id = 1").fetchone()[0])

    def versions(self) -> list[VersionInfo]:
        with self._lock, _sqlite_errors(self.root, "read"):
            rows = self._db.execute(
                "SELECT version, created_at, reason, n_memories, n_pieces FROM versions "
                "ORDER BY version").fetchall()
        return [VersionInfo(*r) for r in rows]

    def snapshot(self, version: int | None, dim: int) -> Snapshot:
        """Everything live in ``version`` (the head if None)."""
        with self._lock, _sqlite_errors(self.root, "read"):
            self._db.execute("BEGIN")
            try:
                if version is None:
                    version = self.head()
                if version == 0:
                    return Snapshot(0)
                vrow = self._db.execute(
                    "SELECT gate_file, index_file FROM versions WHERE version = ?", (version,)
                ).fetchone()
                if vrow is None:
                    raise NotFound(f"no codebook version {version}", field="version")
                live = "added_in <= ? AND (removed_in IS NULL OR removed_in > ?)"
                mems = self._db.execute(
                    "SELECT id, kind, content_hash, adapter_dir, key, bucket, conflict, "
                    f"key_stats, train_loss, created_at, added_in FROM memories WHERE {live} "
                    "ORDER BY id", (version, version)).fetchall()
                pcs = self._db.execute(
                    "SELECT id, kind, prompt, target, paraphrases, memory_id, keys, created_at, "
                    f"added_in FROM pieces WHERE {live} ORDER BY id", (version, version)
                ).fetchall()
                ret = self._db.execute(
                    f"SELECT prompt, target, key, added_in FROM retain WHERE {live} ORDER BY row",
                    (version, version)).fetchall()
            finally:
                self._db.execute("COMMIT")
        memories = {}
        for m in mems:
            conflict = ConflictDecision(**json.loads(m[6])) if m[6] else None
            memories[m[0]] = MemoryRecord(m[0], m[1], m[2], m[3], _unblob(m[4], dim)[0], m[5],
                                          conflict, json.loads(m[7]), m[8], m[9], m[10])
        pieces = {
            p[0]: PieceRecord(p[0], PieceKind(p[1]), p[2], p[3], tuple(json.loads(p[4])), p[5],
                              _unblob(p[6], dim), p[7], p[8])
            for p in pcs
        }
        retain = tuple(RetainRecord(r[0], r[1], _unblob(r[2], dim)[0], r[3]) for r in ret)
        return Snapshot(version, memories, pieces, retain, vrow[0], vrow[1])

    # ------------------------------------------------------------------ writing
    def next_version(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT MAX(version) FROM versions").fetchone()
        return max(row[0] or 0, self.head()) + 1

    def publish(self, version: int, memories: Iterable[MemoryRecord],
                pieces: Iterable[PieceRecord], retain: Iterable[RetainRecord], *,
                gate_file: str | None, index_file: str | None, reason: str,
                extra_sql: Sequence[SqlStatement] = ()) -> None:
        """Make ``version`` the head with exactly these rows, in one transaction.

        ``extra_sql`` runs in the same transaction, on the caller's own tables: a caller's record
        of the change (a job marked done) is committed if and only if the version is."""
        memories, pieces, retain = list(memories), list(pieces), list(retain)
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                if self._db.execute("SELECT 1 FROM versions WHERE version = ?",
                                    (version,)).fetchone():
                    raise StoreError(f"version {version} already exists")
                self._sync_memories(version, memories)
                self._sync_pieces(version, pieces)
                self._sync_retain(version, retain)
                self._db.execute(
                    "INSERT INTO versions (version, created_at, reason, gate_file, index_file, "
                    "n_memories, n_pieces) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (version, time.time(), reason, gate_file, index_file, len(memories),
                     len(pieces)))
                self._db.execute("UPDATE head SET version = ? WHERE id = 1", (version,))
                for sql, params in extra_sql:
                    self._db.execute(sql, tuple(params))
                _fault("before_commit", version)
                self._db.execute("COMMIT")
                _fault("after_commit", version)
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def _live(self, table: str, cols: str) -> list[tuple]:
        return self._db.execute(
            f"SELECT row, {cols} FROM {table} WHERE removed_in IS NULL").fetchall()

    def _close_rows(self, table: str, rows: list[int], version: int) -> None:
        self._db.executemany(f"UPDATE {table} SET removed_in = ? WHERE row = ?",
                             [(version, r) for r in rows])

    def _sync_memories(self, version: int, memories: list[MemoryRecord]) -> None:
        current = {(mid, h): row for row, mid, h in self._live("memories", "id, content_hash")}
        wanted = {(m.id, m.content_hash): m for m in memories}
        self._close_rows("memories", [r for k, r in current.items() if k not in wanted], version)
        for k, m in wanted.items():
            if k in current:
                continue
            conflict = json.dumps(m.conflict.__dict__) if m.conflict else None
            self._db.execute(
                "INSERT INTO memories (id, kind, content_hash, adapter_dir, key, bucket, conflict,"
                " key_stats, train_loss, created_at, added_in) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (m.id, m.kind, m.content_hash, m.adapter_dir, _blob(m.key), m.bucket, conflict,
                 json.dumps(m.key_stats), m.train_loss, m.created_at, version))

    def _sync_pieces(self, version: int, pieces: list[PieceRecord]) -> None:
        current = {(pid, mid): row for row, pid, mid in self._live("pieces", "id, memory_id")}
        wanted = {(p.id, p.memory_id): p for p in pieces}
        self._close_rows("pieces", [r for k, r in current.items() if k not in wanted], version)
        for k, p in wanted.items():
            if k in current:
                continue
            self._db.execute(
                "INSERT INTO pieces (id, kind, prompt, target, paraphrases, memory_id, keys, "
                "created_at, added_in) VALUES (?,?,?,?,?,?,?,?,?)",
                (p.id, str(p.kind), p.prompt, p.target, json.dumps(list(p.paraphrases)),
                 p.memory_id, _blob(p.keys), p.created_at, version))

    def _sync_retain(self, version: int, retain: list[RetainRecord]) -> None:
        current = {(p, t): row for row, p, t in self._live("retain", "prompt, target")}
        wanted = {(r.prompt, r.target): r for r in retain}
        self._close_rows("retain", [r for k, r in current.items() if k not in wanted], version)
        for k, r in wanted.items():
            if k not in current:
                self._db.execute(
                    "INSERT INTO retain (prompt, target, key, added_in) VALUES (?,?,?,?)",
                    (r.prompt, r.target, _blob(r.key), version))


# ---------------------------------------------------------------------- start-up checks
def unwritable_reason(root: Path, exc: OSError) -> str:
    """A one-line reason why the store directory ``root`` cannot be written."""
    if exc.errno == errno.EROFS:
        return f"store directory {root} is on a read-only file system"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"store directory {root} is not writable by this process (permission denied)"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        try:
            st = os.statvfs(root)
            free = f"{st.f_bavail * st.f_frsize} bytes free"
        except OSError:
            free = "free space unknown"
        return f"store directory {root}: no space left on the device ({free})"
    return f"store directory {root} cannot be written ({exc.strerror or exc})"


def check_writable(root: Path) -> None:
    """Write, fsync and remove a probe file: StoreError naming the reason if that fails."""
    probe = root / f"{_PROBE_NAME}-{os.getpid()}-{threading.get_ident()}"
    try:
        with open(probe, "wb") as fh:
            fh.write(b"\0" * _PROBE_BYTES)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise StoreError(unwritable_reason(root, exc)) from exc
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


@contextlib.contextmanager
def _sqlite_errors(root: Path, doing: str) -> Iterator[None]:
    """SQLite errors as StoreError naming the file (a corrupted file, a full disk...)."""
    try:
        yield
    except sqlite3.Error as exc:
        raise StoreError(f"cannot {doing} the store database {root / DB_NAME}: {exc}; "
                         "run `loka store check`") from exc


def connect_read_only(root: Path) -> sqlite3.Connection:
    """Open without writing; on read-only media (no -shm can be made) as an immutable file."""
    if not (root / DB_NAME).is_file():
        raise StoreError(f"no {DB_NAME} in {root}: not a LOKA store")
    uri = f"file:{root / DB_NAME}?mode=ro"
    if not os.access(root, os.W_OK) or _on_read_only_fs(root):
        uri = f"file:{root / DB_NAME}?immutable=1"
    try:
        db = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
        db.execute("SELECT COUNT(*) FROM head").fetchone()
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read the store database {root / DB_NAME}: {exc}") from exc
    return db


def _on_read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _fault(point: str, version: int) -> None:
    """Test-only fault injection at ``point`` of a publish (see the module docstring)."""
    spec = os.environ.get("LOKA_FAULT")
    if not spec:
        return
    name, _, arg = spec.partition(":")
    if name == point == "before_commit":
        logger.error("LOKA_FAULT %s version %d: exiting", point, version)
        os._exit(70)  # simulates a crash: the transaction is never committed
    if name == f"sleep_{point}":
        logger.error("LOKA_FAULT %s version %d: sleeping %s s", point, version, arg)
        for handler in logging.getLogger().handlers:
            handler.flush()
        time.sleep(float(arg or 60))
