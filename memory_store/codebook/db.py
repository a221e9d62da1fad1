"""The codebook's database behind one interface, with two engines: SQLite and PostgreSQL.

``open_database(root, url)`` returns an ``SqliteDatabase`` on ``<root>/loka.sqlite`` (the
embedded default) or, for ``url = postgresql://...``, a ``PostgresDatabase``. Callers write
portable SQL with ``?`` placeholders and ``ON CONFLICT`` upserts; the schema is written once with
``{blob}``, ``{real}`` and ``{serial}`` type slots that each engine fills in.

Schema migrations: a ``schema_version`` table holds the number of the last migration applied;
``migrate`` runs the missing ones in order, each in its own transaction, under a lock that
serialises processes starting together (SQLite's write lock; a PostgreSQL advisory lock).

Transactions: ``with db.transaction(write=True) as tx`` is ``BEGIN IMMEDIATE`` on SQLite (one
writer at a time) and a plain transaction on PostgreSQL (the statements take their row locks;
``lock_head`` takes the head's). ``tx.notify(channel, payload)`` is delivered at the commit on
PostgreSQL and is a no-op on SQLite (followers poll there).
"""

from __future__ import annotations

import abc
import contextlib
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from memory_store.errors import StoreError

logger = logging.getLogger(__name__)

DB_NAME = "loka.sqlite"
HEAD_CHANNEL = "loka_head"
_ADVISORY_MIGRATE = 4_711_001

Params = Sequence[object]


class Tx:
    """One open transaction (or an autocommit connection): ``execute`` and fetch helpers."""

    def __init__(self, db: Database, raw: Any) -> None:
        self._db = db
        self._raw = raw

    def execute(self, sql: str, params: Params = ()) -> Any:
        return self._db._execute(self._raw, sql, params)

    def one(self, sql: str, params: Params = ()) -> tuple | None:
        return self.execute(sql, params).fetchone()

    def all(self, sql: str, params: Params = ()) -> list[tuple]:
        return list(self.execute(sql, params).fetchall())

    def dicts(self, sql: str, params: Params = ()) -> list[dict[str, Any]]:
        cur = self.execute(sql, params)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def rowcount(self, sql: str, params: Params = ()) -> int:
        return int(self.execute(sql, params).rowcount)

    def notify(self, channel: str, payload: str) -> None:
        self._db._notify(self._raw, channel, payload)

    def lock_head(self) -> int:
        """The head version, locked until the end of this transaction."""
        row = self.one("SELECT version FROM head WHERE id = 1" + self._db.for_update)
        return int(row[0]) if row else 0


class Database(abc.ABC):
    """A connection (guarded by a lock, so one thread at a time) to the codebook's database.
    Abstract: ``SqliteDatabase`` and ``PostgresDatabase`` implement the engine specifics."""

    dialect = "?"
    for_update = ""  # appended to a SELECT that locks its rows
    skip_locked = ""  # appended to a SELECT that skips rows other transactions lock
    types: dict[str, str] = {}
    describe = "database"

    def __init__(self) -> None:
        self.lock = threading.RLock()

    # -- engine specifics ------------------------------------------------------------------
    @abc.abstractmethod
    def _execute(self, raw: Any, sql: str, params: Params) -> Any:
        """Run one statement on ``raw`` (the engine's connection)."""

    def _notify(self, raw: Any, channel: str, payload: str) -> None:  # noqa: B027
        """Tell other processes of a new version (PostgreSQL); SQLite replicas poll instead."""

    @abc.abstractmethod
    def _begin(self, write: bool) -> contextlib.AbstractContextManager[Any]:
        """A transaction on the engine's connection (a context manager yielding it)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close the connection."""

    @abc.abstractmethod
    def errors(self) -> tuple[type[BaseException], ...]:
        """The engine's own exception classes (turned into ``StoreError`` by callers)."""

    # -- common ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self, write: bool = True) -> Iterator[Tx]:
        with self.lock, self._begin(write) as raw:
            yield Tx(self, raw)

    def auto(self) -> Tx:
        """Statements outside a transaction (each commits on its own). Hold ``lock``."""
        return Tx(self, self._autocommit_conn())

    @abc.abstractmethod
    def _autocommit_conn(self) -> Any:
        """The connection for statements outside a transaction."""

    def query(self, sql: str, params: Params = ()) -> list[tuple]:
        with self.lock:
            return self.auto().all(sql, params)

    def query_dicts(self, sql: str, params: Params = ()) -> list[dict[str, Any]]:
        with self.lock:
            return self.auto().dicts(sql, params)

    def run(self, sql: str, params: Params = ()) -> int:
        """One statement in its own transaction; the number of rows it changed."""
        with self.transaction(write=True) as tx:
            return tx.rowcount(sql, params)

    def ddl(self, template: str) -> list[str]:
        """The statements of a schema template with this engine's types filled in."""
        sql = template.format(**self.types)
        return [s.strip() for s in sql.split(";") if s.strip()]

    def migrate(self, migrations: Sequence[Callable[[Database], list[str]]]) -> int:
        """Apply the migrations not yet applied, in order; the schema version reached."""
        with self.transaction(write=True) as tx:
            self._migration_lock(tx)
            tx.execute("CREATE TABLE IF NOT EXISTS schema_version "
                       "(id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)")
            row = tx.one("SELECT version FROM schema_version WHERE id = 1")
            current = int(row[0]) if row else 0
            if current > len(migrations):
                raise StoreError(f"the {self.describe} has schema version {current}, newer than "
                                 f"this program's {len(migrations)}; upgrade LOKA Serve")
            for number in range(current + 1, len(migrations) + 1):
                for statement in migrations[number - 1](self):
                    tx.execute(statement)
                logger.info("%s: schema migration %d applied", self.describe, number)
            tx.execute("INSERT INTO schema_version (id, version) VALUES (1, ?) "
                       "ON CONFLICT (id) DO UPDATE SET version = excluded.version",
                       (len(migrations),))
        return len(migrations)

    def _migration_lock(self, tx: Tx) -> None:  # noqa: B027
        """Serialise migrations across processes (PostgreSQL: an advisory lock); SQLite's write
        transaction already does."""


class SqliteDatabase(Database):
    """``<root>/loka.sqlite`` in WAL mode with ``synchronous=FULL``."""

    dialect = "sqlite"
    types = {"blob": "BLOB", "real": "REAL",
             "serial": "INTEGER PRIMARY KEY AUTOINCREMENT"}

    def __init__(self, path: Path, *, read_only: bool = False, uri: str | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        self.describe = f"store database {self.path}"
        if uri is not None:
            self.conn = sqlite3.connect(uri, uri=True, check_same_thread=False,
                                        isolation_level=None)
        else:
            self.conn = sqlite3.connect(self.path, check_same_thread=False,
                                        isolation_level=None, timeout=60.0)
        if not read_only:
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")

    def errors(self) -> tuple[type[BaseException], ...]:
        return (sqlite3.Error,)

    def _execute(self, raw: sqlite3.Connection, sql: str, params: Params) -> Any:
        return raw.execute(sql, tuple(params))

    def _autocommit_conn(self) -> sqlite3.Connection:
        return self.conn

    @contextlib.contextmanager
    def _begin(self, write: bool) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield self.conn
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def close(self) -> None:
        with self.lock:
            self.conn.close()


class PostgresDatabase(Database):
    """A PostgreSQL database named by a ``postgresql://`` URL (psycopg 3)."""

    dialect = "postgresql"
    for_update = " FOR UPDATE"
    skip_locked = " FOR UPDATE SKIP LOCKED"
    types = {"blob": "BYTEA", "real": "DOUBLE PRECISION",
             "serial": "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"}

    def __init__(self, url: str) -> None:
        super().__init__()
        import psycopg

        self._psycopg = psycopg
        self.url = url
        self.describe = f"PostgreSQL database {redact_url(url)}"
        try:
            self.conn = psycopg.connect(url, autocommit=True, connect_timeout=30)
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to the {self.describe}: {exc}") from exc

    def errors(self) -> tuple[type[BaseException], ...]:
        return (self._psycopg.Error,)

    def _execute(self, raw: Any, sql: str, params: Params) -> Any:
        return raw.execute(to_pyformat(sql), tuple(_pg_param(p) for p in params))

    def _autocommit_conn(self) -> Any:
        return self.conn

    def _notify(self, raw: Any, channel: str, payload: str) -> None:
        raw.execute("SELECT pg_notify(%s, %s)", (channel, payload))

    def _migration_lock(self, tx: Tx) -> None:
        tx.execute("SELECT pg_advisory_xact_lock(?)", (_ADVISORY_MIGRATE,))

    @contextlib.contextmanager
    def _begin(self, write: bool) -> Iterator[Any]:
        if self.conn.closed:  # a dropped connection: one reconnect, then errors surface
            self.conn = self._psycopg.connect(self.url, autocommit=True, connect_timeout=30)
        with self.conn.transaction():
            yield self.conn

    def close(self) -> None:
        with self.lock:
            self.conn.close()


def to_pyformat(sql: str) -> str:
    """``?`` placeholders as psycopg's ``%s`` (a literal ``%`` doubled)."""
    return sql.replace("%", "%%").replace("?", "%s")


def _pg_param(value: object) -> object:
    if isinstance(value, memoryview):
        return bytes(value)
    return value


def redact_url(url: str) -> str:
    """The URL without its password."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def is_postgres_url(url: str | None) -> bool:
    return bool(url) and url.split(":", 1)[0] in ("postgresql", "postgres")


def open_database(root: Path, url: str | None = None, *, read_only: bool = False,
                  uri: str | None = None) -> Database:
    """The codebook database of the store at ``root``: PostgreSQL if ``url`` names one, else
    SQLite in the store directory."""
    if url:
        if not is_postgres_url(url):
            raise StoreError(f"LOKA_DATABASE_URL must be a postgresql:// URL, not "
                             f"{redact_url(url)!r}")
        return PostgresDatabase(url)
    return SqliteDatabase(Path(root) / DB_NAME, read_only=read_only, uri=uri)
