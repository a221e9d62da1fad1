"""The codebook on disk: a directory with SQLite metadata and immutable files.

Layout::

    store/
      loka.sqlite                  pieces, memories, retain prompts, versions, head, jobs (WAL
                                   mode); with LOKA_DATABASE_URL these tables live in PostgreSQL
      adapters/<memory id>/<hash>/ one PEFT adapter folder per memory content (immutable)
      versions/index-<sha256>.faiss  a version's FAISS index (named by its content)
      versions/gate-<sha256>.safetensors  a version's router weights (named by its content)

The database is SQLite (embedded, the default) or PostgreSQL (``codebook.db``), with the
same schema (ordered migrations, ``MIGRATIONS``) and semantics. Every file is immutable and
named by its content, so writers on a shared directory never overwrite each other's files.
Publishing is a compare-and-swap on the head: a change planned on version ``base`` publishes
only if the head is still ``base`` (else ``HeadMoved``), with the new version's number taken
inside the transaction.

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
import dataclasses
import errno
import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from memory_store.codebook.db import (
    DB_NAME,
    HEAD_CHANNEL,
    Database,
    SqliteDatabase,
    Tx,
    open_database,
)
from memory_store.errors import HeadMoved, LeaseLost, NotFound, StoreError
from memory_store.files import fsync_dir
from memory_store.types import ConflictDecision, PieceKind, VersionInfo

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 3
# written, fsynced and removed at open: a publish needs a few pages of WAL and adapter files
_PROBE_BYTES = 64 * 1024
_PROBE_NAME = ".loka-write-check"
# an SQL statement and its parameters, run by ``publish`` inside the publishing transaction
SqlStatement = tuple[str, Sequence[object]]
# the statements a caller commits with a version, given the version's number
ExtraSql = Callable[[int], Sequence[SqlStatement]]

_SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS blobs (key TEXT PRIMARY KEY, value {blob} NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS versions (
    version INTEGER PRIMARY KEY, created_at {real} NOT NULL, reason TEXT NOT NULL,
    gate_file TEXT, index_file TEXT, n_memories INTEGER NOT NULL, n_pieces INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS head (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS memories (
    row {serial}, id TEXT NOT NULL, kind TEXT NOT NULL,
    content_hash TEXT NOT NULL, adapter_dir TEXT NOT NULL, key {blob} NOT NULL, bucket INTEGER,
    conflict TEXT, key_stats TEXT NOT NULL, train_loss {real}, created_at {real} NOT NULL,
    added_in INTEGER NOT NULL, removed_in INTEGER);
CREATE TABLE IF NOT EXISTS pieces (
    row {serial}, id TEXT NOT NULL, kind TEXT NOT NULL,
    prompt TEXT NOT NULL, target TEXT NOT NULL, paraphrases TEXT NOT NULL,
    memory_id TEXT NOT NULL, keys {blob} NOT NULL, created_at {real} NOT NULL,
    added_in INTEGER NOT NULL, removed_in INTEGER);
CREATE TABLE IF NOT EXISTS retain (
    row {serial}, prompt TEXT NOT NULL, target TEXT NOT NULL,
    key {blob} NOT NULL, added_in INTEGER NOT NULL, removed_in INTEGER);
CREATE INDEX IF NOT EXISTS memories_live ON memories (removed_in, id);
CREATE INDEX IF NOT EXISTS pieces_live ON pieces (removed_in, id);
CREATE INDEX IF NOT EXISTS retain_live ON retain (removed_in);
INSERT INTO head (id, version) VALUES (1, 0) ON CONFLICT (id) DO NOTHING
"""

# the service's job table (``service.jobs``), in the same database so that a job's completion
# commits with its version
_JOBS_V2 = """
CREATE TABLE IF NOT EXISTS service_jobs (
    seq {serial},
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    payload TEXT NOT NULL,
    stage TEXT NOT NULL DEFAULT 'queued',
    step INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    result TEXT,
    error TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at {real} NOT NULL,
    started_at {real},
    finished_at {real}
);
CREATE INDEX IF NOT EXISTS service_jobs_status ON service_jobs (status, seq)
"""

# leases: the worker holding a running job and until when (renewed by its heartbeat)
_LEASES_V3 = """
ALTER TABLE service_jobs ADD COLUMN lease_owner TEXT;
ALTER TABLE service_jobs ADD COLUMN lease_until {real}
"""

MIGRATIONS: list[Callable[[Database], list[str]]] = [
    lambda db: db.ddl(_SCHEMA_V1),
    lambda db: db.ddl(_JOBS_V2),
    lambda db: db.ddl(_LEASES_V3),
]
assert len(MIGRATIONS) == SCHEMA_VERSION


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
    """The codebook's database (SQLite or PostgreSQL) + immutable files in ``root``.

    Thread-safe. Any number of processes may write: ``publish`` is a compare-and-swap on the
    head, so a writer whose base version is no longer the head gets ``HeadMoved`` and nothing
    is written."""

    def __init__(self, root: Path, *, read_only: bool = False,
                 database_url: str | None = None) -> None:
        self.root = Path(root)
        self.read_only = read_only
        self.database_url = database_url or None
        if read_only:
            if self.database_url:
                self.db = open_database(self.root, self.database_url)
            else:
                self.db = SqliteDatabase(self.root / DB_NAME, read_only=True,
                                         uri=read_only_uri(self.root))
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            (self.root / "adapters").mkdir(exist_ok=True)
            (self.root / "versions").mkdir(exist_ok=True)
        except OSError as exc:
            raise StoreError(unwritable_reason(self.root, exc)) from exc
        check_writable(self.root)
        with _db_errors(self.root, "open"):
            self.db = open_database(self.root, self.database_url)
        try:
            self._open_schema()
        except BaseException:
            self.db.close()
            raise

    @property
    def dialect(self) -> str:
        return self.db.dialect

    def _open_schema(self) -> None:
        """SQLite's own quick check, then the schema migrations."""
        with _db_errors(self.root, "open"):
            if isinstance(self.db, SqliteDatabase):
                found = self.db.query("PRAGMA quick_check")[0][0]
                if found != "ok":
                    raise StoreError(f"store database {self.db_path} is corrupted "
                                     f"({' '.join(found.split())}); restore it from a backup "
                                     "(`loka store check` lists the problems)")
            self.db.migrate(MIGRATIONS)
            if self.get_meta("schema_version") is None:
                self.set_meta("schema_version", str(SCHEMA_VERSION))

    @property
    def db_path(self) -> Path:
        return self.root / DB_NAME

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------------ meta and counters
    def get_meta(self, key: str) -> str | None:
        with _db_errors(self.root, "read"):
            rows = self.db.query("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        self.db.run("INSERT INTO meta (key, value) VALUES (?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))

    def set_meta_once(self, key: str, value: str) -> str:
        """Set ``key`` unless a process already did; the value that holds."""
        self.db.run("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                    (key, value))
        found = self.get_meta(key)
        assert found is not None
        return found

    def get_blob(self, key: str) -> bytes | None:
        with _db_errors(self.root, "read"):
            rows = self.db.query("SELECT value FROM blobs WHERE key = ?", (key,))
        return bytes(rows[0][0]) if rows else None

    def set_blob(self, key: str, value: bytes) -> None:
        self.db.run("INSERT INTO blobs (key, value) VALUES (?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))

    def next_ids(self, name: str, count: int) -> list[int]:
        """Reserve ``count`` ids; never reused, even after a rollback or by another process."""
        with self.db.transaction(write=True) as tx:
            row = tx.one("INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT (name) "
                         "DO UPDATE SET value = counters.value + excluded.value RETURNING value",
                         (name, count))
        end = int(row[0])
        return list(range(end - count + 1, end + 1))

    # ------------------------------------------------------------------ files
    def put_file(self, kind: str, suffix: str, write: Callable[[Path], None]) -> str:
        """Write an immutable file named by the sha256 of its content: ``write(tmp)`` writes
        it, then it is fsynced and renamed to ``versions/<kind>-<sha256>.<suffix>`` and the
        directory fsynced. The name relative to the store (identical content, identical name:
        two writers never overwrite each other's file with a different one)."""
        folder = self.root / "versions"
        tmp = folder / f".tmp-{kind}-{os.getpid()}-{threading.get_ident()}"
        try:
            write(tmp)
            digest = hashlib.sha256()
            with open(tmp, "rb+") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
                os.fsync(fh.fileno())
            name = f"versions/{kind}-{digest.hexdigest()}.{suffix}"
            os.replace(tmp, self.root / name)
            fsync_dir(folder)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
        return name

    # ------------------------------------------------------------------ reading
    def head(self) -> int:
        with _db_errors(self.root, "read"):
            rows = self.db.query("SELECT version FROM head WHERE id = 1")
        return int(rows[0][0]) if rows else 0

    def versions(self) -> list[VersionInfo]:
        with _db_errors(self.root, "read"):
            rows = self.db.query(
                "SELECT version, created_at, reason, n_memories, n_pieces FROM versions "
                "ORDER BY version")
        return [VersionInfo(*r) for r in rows]

    def snapshot(self, version: int | None, dim: int) -> Snapshot:
        """Everything live in ``version`` (the head if None). Rows are filtered by version,
        so a publish committing meanwhile cannot change what this reads."""
        with _db_errors(self.root, "read"), self.db.transaction(write=False) as tx:
            if version is None:
                row = tx.one("SELECT version FROM head WHERE id = 1")
                version = int(row[0]) if row else 0
            if version == 0:
                return Snapshot(0)
            vrow = tx.one("SELECT gate_file, index_file FROM versions WHERE version = ?",
                          (version,))
            if vrow is None:
                raise NotFound(f"no codebook version {version}", field="version")
            live = "added_in <= ? AND (removed_in IS NULL OR removed_in > ?)"
            mems = tx.all(
                "SELECT id, kind, content_hash, adapter_dir, key, bucket, conflict, "
                f"key_stats, train_loss, created_at, added_in FROM memories WHERE {live} "
                "ORDER BY id", (version, version))
            pcs = tx.all(
                "SELECT id, kind, prompt, target, paraphrases, memory_id, keys, created_at, "
                f"added_in FROM pieces WHERE {live} ORDER BY id", (version, version))
            ret = tx.all(
                f"SELECT prompt, target, key, added_in FROM retain WHERE {live} ORDER BY row",
                (version, version))
        memories = {}
        for m in mems:
            conflict = _conflict_of(m[6])
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
        """The number the next publish would take (informational: ``publish`` picks it inside
        its transaction)."""
        rows = self.db.query("SELECT MAX(version) FROM versions")
        return max(rows[0][0] or 0, self.head()) + 1

    def publish(self, base: int, memories: Iterable[MemoryRecord],
                pieces: Iterable[PieceRecord], retain: Iterable[RetainRecord], *,
                gate_file: str | None, index_file: str | None, reason: str,
                extra_sql: ExtraSql | Sequence[SqlStatement] = ()) -> int:
        """Make a new version with exactly these rows the head, in one transaction, if the
        head is still ``base`` (else ``HeadMoved``, nothing written); the new version.

        ``extra_sql`` (statements, or a function of the new version giving them) runs in the
        same transaction on the caller's own tables, and each statement must change a row
        (else ``LeaseLost``: the caller no longer owns what it records): a caller's record of
        the change (a job marked done) is committed if and only if the version is."""
        memories, pieces, retain = list(memories), list(pieces), list(retain)
        with _db_errors(self.root, "write"), self.db.transaction(write=True) as tx:
            head = tx.lock_head()
            if head != base:
                raise HeadMoved(base, head)
            top = tx.one("SELECT MAX(version) FROM versions")[0] or 0
            version = max(top, head) + 1
            self._sync_memories(tx, version, memories)
            self._sync_pieces(tx, version, pieces)
            self._sync_retain(tx, version, retain)
            tx.execute(
                "INSERT INTO versions (version, created_at, reason, gate_file, index_file, "
                "n_memories, n_pieces) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (version, time.time(), reason, gate_file, index_file, len(memories),
                 len(pieces)))
            tx.execute("UPDATE head SET version = ? WHERE id = 1", (version,))
            extra = extra_sql(version) if callable(extra_sql) else extra_sql
            for sql, params in extra:
                if tx.rowcount(sql, tuple(params)) == 0:
                    raise LeaseLost("the change's record names no row it may update (a job "
                                    "taken over by another worker?); nothing was published")
            tx.notify(HEAD_CHANNEL, str(version))
            _fault("before_commit", version)
        _fault("after_commit", version)
        return version

    def _live(self, tx: Tx, table: str, cols: str) -> list[tuple]:
        return tx.all(f"SELECT row, {cols} FROM {table} WHERE removed_in IS NULL")

    def _close_rows(self, tx: Tx, table: str, rows: list[int], version: int) -> None:
        for r in rows:
            tx.execute(f"UPDATE {table} SET removed_in = ? WHERE row = ?", (version, r))

    def _sync_memories(self, tx: Tx, version: int, memories: list[MemoryRecord]) -> None:
        current = {(mid, h): row for row, mid, h in self._live(tx, "memories", "id, content_hash")}
        wanted = {(m.id, m.content_hash): m for m in memories}
        self._close_rows(tx, "memories", [r for k, r in current.items() if k not in wanted],
                         version)
        for k, m in wanted.items():
            if k in current:
                continue
            conflict = json.dumps(m.conflict.__dict__) if m.conflict else None
            tx.execute(
                "INSERT INTO memories (id, kind, content_hash, adapter_dir, key, bucket, conflict,"
                " key_stats, train_loss, created_at, added_in) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (m.id, m.kind, m.content_hash, m.adapter_dir, _blob(m.key), m.bucket, conflict,
                 json.dumps(m.key_stats), m.train_loss, m.created_at, version))

    def _sync_pieces(self, tx: Tx, version: int, pieces: list[PieceRecord]) -> None:
        current = {(pid, mid): row for row, pid, mid in self._live(tx, "pieces", "id, memory_id")}
        wanted = {(p.id, p.memory_id): p for p in pieces}
        self._close_rows(tx, "pieces", [r for k, r in current.items() if k not in wanted],
                         version)
        for k, p in wanted.items():
            if k in current:
                continue
            tx.execute(
                "INSERT INTO pieces (id, kind, prompt, target, paraphrases, memory_id, keys, "
                "created_at, added_in) VALUES (?,?,?,?,?,?,?,?,?)",
                (p.id, str(p.kind), p.prompt, p.target, json.dumps(list(p.paraphrases)),
                 p.memory_id, _blob(p.keys), p.created_at, version))

    def _sync_retain(self, tx: Tx, version: int, retain: list[RetainRecord]) -> None:
        current = {(p, t): row for row, p, t in self._live(tx, "retain", "prompt, target")}
        wanted = {(r.prompt, r.target): r for r in retain}
        self._close_rows(tx, "retain", [r for k, r in current.items() if k not in wanted],
                         version)
        for k, r in wanted.items():
            if k not in current:
                tx.execute("INSERT INTO retain (prompt, target, key, added_in) VALUES (?,?,?,?)",
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
def _db_errors(root: Path, doing: str) -> Iterator[None]:
    """Database errors (SQLite or PostgreSQL) as StoreError naming the database."""
    try:
        yield
    except sqlite3.Error as exc:
        raise StoreError(f"cannot {doing} the store database {root / DB_NAME}: {exc}; "
                         "run `loka store check`") from exc
    except Exception as exc:
        if type(exc).__module__.startswith("psycopg"):
            raise StoreError(f"cannot {doing} the codebook database: {exc}") from exc
        raise


def read_only_uri(root: Path) -> str:
    """The SQLite URI that opens ``root``'s database without writing (immutable on read-only
    media, where no -shm file can be made)."""
    if not (root / DB_NAME).is_file():
        raise StoreError(f"no {DB_NAME} in {root}: not a LOKA store")
    uri = f"file:{root / DB_NAME}?mode=ro"
    if not os.access(root, os.W_OK) or _on_read_only_fs(root):
        uri = f"file:{root / DB_NAME}?immutable=1"
    return uri


def connect_read_only(root: Path) -> sqlite3.Connection:
    """Open without writing; on read-only media (no -shm can be made) as an immutable file."""
    uri = read_only_uri(root)
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


def _conflict_of(text: str | None) -> ConflictDecision | None:
    """A stored conflict decision; fields a row lacks (written by an older version: no
    ``warmup_steps``, no ``cosines``) take their defaults, unknown ones are ignored."""
    if not text:
        return None
    known = {f.name for f in dataclasses.fields(ConflictDecision)}
    return ConflictDecision(**{k: v for k, v in json.loads(text).items() if k in known})
