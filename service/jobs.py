"""Knowledge-changing jobs: persisted in the store's SQLite, run one at a time, FIFO.

A job accepted with 202 is a row of ``service_jobs`` before the response is sent, so it survives
a restart: queued jobs run after the restart and a job that was running is re-run from the start
(up to ``max_attempts`` interruptions, then it is failed). A job that succeeds is marked
``succeeded`` in the very transaction that publishes its codebook version (the engine's
``on_publish``), so a crash can never leave a published change whose job would run again, nor a
``succeeded`` job without its version: every accepted job takes effect exactly once. One worker
thread in the server process executes the jobs; cancellation and shutdown reach a running job
through the engine's ``should_cancel`` callback. Progress is kept in memory and written to the
row every half second.

An update's payload holds its unlearning targets, which are sensitive: it is kept only while the
job may still run, and replaced by a count of pieces when the job ends (``secure_delete`` zeroes
the old bytes in the database file).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from memory_store.errors import Cancelled, ConflictError, LokaError, NotFound, StoreError
from memory_store.types import (
    PieceCheck,
    PieceKind,
    PieceSpec,
    RetainSpec,
    UpdateOptions,
    UpdateResult,
)

if TYPE_CHECKING:
    from memory_store import Loka

logger = logging.getLogger(__name__)

JobKind = Literal["update", "delete_piece"]
FINISHED = ("succeeded", "failed", "cancelled")
_PROGRESS_WRITE_S = 0.5
_RETRY_WRITE_S = 1.0  # a final status that cannot be written (disk full) is retried this often

_SCHEMA = """
CREATE TABLE IF NOT EXISTS service_jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
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
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS service_jobs_status ON service_jobs (status, seq);
"""


@dataclass(frozen=True)
class Job:
    """A snapshot of one job row."""

    id: str
    kind: JobKind
    status: str
    payload: dict[str, Any]
    stage: str
    step: int
    total: int
    result: dict[str, Any] | None
    error: str | None
    cancel_requested: bool
    attempts: int
    created_at: float
    started_at: float | None
    finished_at: float | None


def new_job_id() -> str:
    """A fresh job id: ``job_`` + 32 hex digits."""
    return f"job_{uuid.uuid4().hex}"


def update_payload(
    pieces: Sequence[PieceSpec], retain: Sequence[RetainSpec], options: UpdateOptions
) -> dict[str, Any]:
    """The JSON payload of an update job."""
    return {
        "pieces": [
            {"kind": str(p.kind), "prompt": p.prompt, "target": p.target,
             "paraphrases": list(p.paraphrases)}
            for p in pieces
        ],
        "retain": [{"prompt": r.prompt, "target": r.target} for r in retain],
        "options": asdict(options),
    }


def _decode_update(payload: dict[str, Any]) -> tuple[list[PieceSpec], list[RetainSpec],
                                                      UpdateOptions]:
    pieces = [
        PieceSpec(kind=PieceKind(p["kind"]), prompt=p["prompt"], target=p["target"],
                  paraphrases=tuple(p["paraphrases"]))
        for p in payload["pieces"]
    ]
    retain = [RetainSpec(prompt=r["prompt"], target=r["target"]) for r in payload["retain"]]
    return pieces, retain, UpdateOptions(**payload["options"])


def _result_dict(r: UpdateResult) -> dict[str, Any]:
    return {
        "codebook_version": r.codebook_version,
        "memories_created": list(r.memories_created),
        "memories_updated": list(r.memories_updated),
        "memories_removed": list(r.memories_removed),
        "pieces_added": list(r.pieces_added),
        "pieces_removed": list(r.pieces_removed),
        "pieces": [piece_check_dict(c) for c in r.checks],
        "pieces_failed": [piece_check_dict(c) for c in r.pieces_failed],
    }


def piece_check_dict(c: PieceCheck) -> dict[str, Any]:
    """A piece's check without its texts (job results keep no prompts or targets)."""
    return {"piece_id": c.piece_id, "kind": str(c.kind), "reached": c.reached,
            "prompts_reached": list(c.prompts.values()), "reason": c.reason, "steps": c.steps}


def scrubbed_payload(kind: str, payload: dict[str, Any]) -> dict[str, Any]:
    """What is kept of a finished job's payload: no prompts or targets, only counts."""
    if kind == "update" and "pieces" in payload:
        return {"n_pieces": len(payload["pieces"]), "n_retain": len(payload.get("retain", ())),
                "scrubbed": True}
    return payload


def _row_to_job(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"],
        kind=row["kind"],
        status=row["status"],
        payload=json.loads(row["payload"]),
        stage=row["stage"],
        step=row["step"],
        total=row["total"],
        result=json.loads(row["result"]) if row["result"] else None,
        error=row["error"],
        cancel_requested=bool(row["cancel_requested"]),
        attempts=row["attempts"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
    )


class JobQueue:
    """A SQLite-persisted FIFO of knowledge changes with one worker thread."""

    def __init__(
        self,
        db_path: Path,
        engine: Loka,
        *,
        max_attempts: int = 3,
        on_finished: Callable[[Job], None] | None = None,
    ) -> None:
        self._engine = engine
        self._max_attempts = max_attempts
        self._on_finished = on_finished
        self._db = sqlite3.connect(
            str(db_path), timeout=30.0, check_same_thread=False, isolation_level=None
        )
        self._db.row_factory = sqlite3.Row
        # an acknowledged job survives a power cut; scrubbed payloads leave no bytes behind
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA secure_delete=ON")
        self._lock = threading.Lock()  # guards the connection and the fields below
        self._wakeup = threading.Event()
        self._stopping = threading.Event()
        self._cancel_running = threading.Event()
        self._running_id: str | None = None
        self._live: tuple[str, int, int] | None = None  # progress of the running job
        self._last_write = 0.0
        self._thread: threading.Thread | None = None
        with self._lock:
            self._db.executescript(_SCHEMA)

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Recover jobs interrupted by a stop, then start the worker."""
        self._recover()
        self._thread = threading.Thread(target=self._work, name="loka-jobs", daemon=True)
        self._thread.start()
        self._wakeup.set()

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop the worker; a running job is cancelled and queued again. True if it stopped."""
        self._stopping.set()
        self._wakeup.set()
        stopped = True
        if self._thread is not None:
            self._thread.join(timeout)
            stopped = not self._thread.is_alive()
            if not stopped:
                logger.warning("job worker still busy after %.0f s; its job re-runs on restart",
                               timeout)
        if stopped:
            with self._lock:
                self._db.close()
        return stopped

    def _recover(self) -> None:
        now = time.time()
        with self._lock:
            cur = self._db.execute(
                "UPDATE service_jobs SET status='cancelled', finished_at=?, stage='cancelled' "
                "WHERE status='running' AND cancel_requested=1",
                (now,),
            )
            cancelled = cur.rowcount
            cur = self._db.execute(
                "UPDATE service_jobs SET status='failed', finished_at=?, stage='failed', "
                "error=? WHERE status='running' AND attempts>=?",
                (now, "interrupted by a restart too many times", self._max_attempts),
            )
            failed = cur.rowcount
            cur = self._db.execute(
                "UPDATE service_jobs SET status='queued', stage='queued', step=0, total=0, "
                "started_at=NULL WHERE status='running'"
            )
            requeued = cur.rowcount
            rows = self._db.execute(
                "SELECT id, kind, payload FROM service_jobs WHERE kind='update' AND status IN "
                "('succeeded', 'failed', 'cancelled') AND payload NOT LIKE '%\"scrubbed\"%'"
            ).fetchall()
            for row in rows:  # finished before payloads were scrubbed
                self._db.execute(
                    "UPDATE service_jobs SET payload=? WHERE id=?",
                    (json.dumps(scrubbed_payload(row["kind"], json.loads(row["payload"]))),
                     row["id"]),
                )
        if cancelled or failed or requeued:
            logger.info("jobs interrupted by the last stop: %d re-queued, %d failed, "
                        "%d cancelled", requeued, failed, cancelled)

    # -- API ----------------------------------------------------------------------------------

    def submit(self, kind: JobKind, payload: dict[str, Any]) -> Job:
        """Persist a queued job and wake the worker."""
        job_id = new_job_id()
        with self._lock:
            try:
                self._db.execute(
                    "INSERT INTO service_jobs (id, kind, status, payload, created_at) "
                    "VALUES (?, ?, 'queued', ?, ?)",
                    (job_id, kind, json.dumps(payload), time.time()),
                )
            except sqlite3.Error as exc:  # a full disk: the job is not accepted
                raise StoreError(f"the job could not be stored, nothing was queued: {exc}") \
                    from exc
        self._wakeup.set()
        logger.info("job %s (%s) queued", job_id, kind)
        return self.get(job_id)

    def get(self, job_id: str) -> Job:
        """The job ``job_id`` (NotFound if unknown)."""
        with self._lock:
            row = self._db.execute("SELECT * FROM service_jobs WHERE id=?", (job_id,)).fetchone()
            live = self._live if job_id == self._running_id else None
        if row is None:
            raise NotFound(f"no job {job_id}", field="id")
        job = _row_to_job(row)
        if live is not None and job.status == "running":
            job = replace(job, stage=live[0], step=live[1], total=live[2])
        return job

    def list_jobs(self, status: str | None = None, limit: int = 100) -> list[Job]:
        """Jobs, newest first, optionally of one status."""
        query = "SELECT * FROM service_jobs"
        args: tuple[Any, ...] = ()
        if status is not None:
            query += " WHERE status=?"
            args = (status,)
        query += " ORDER BY seq DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(query, (*args, limit)).fetchall()
            running, live = self._running_id, self._live
        jobs = [_row_to_job(r) for r in rows]
        return [
            replace(j, stage=live[0], step=live[1], total=live[2])
            if live is not None and j.id == running and j.status == "running" else j
            for j in jobs
        ]

    def counts(self) -> dict[str, int]:
        """Number of jobs per status."""
        with self._lock:
            rows = self._db.execute(
                "SELECT status, COUNT(*) AS n FROM service_jobs GROUP BY status"
            ).fetchall()
        return {r["status"]: r["n"] for r in rows}

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued job now, or ask a running one to stop (it ends ``cancelled``).

        Raises NotFound for an unknown id and ConflictError for a finished job.
        """
        now = time.time()
        with self._lock:
            row = self._db.execute(
                "SELECT status, kind, payload FROM service_jobs WHERE id=?", (job_id,)
            ).fetchone()
            if row is None:
                raise NotFound(f"no job {job_id}", field="id")
            status = row["status"]
            if status in FINISHED:
                raise ConflictError(f"job {job_id} already {status}")
            if status == "queued":
                self._db.execute(
                    "UPDATE service_jobs SET status='cancelled', stage='cancelled', "
                    "cancel_requested=1, finished_at=?, payload=? WHERE id=?",
                    (now, json.dumps(scrubbed_payload(row["kind"], json.loads(row["payload"]))),
                     job_id),
                )
            else:
                self._db.execute(
                    "UPDATE service_jobs SET cancel_requested=1 WHERE id=?", (job_id,)
                )
                if self._running_id == job_id:
                    self._cancel_running.set()
        logger.info("job %s: cancel requested (was %s)", job_id, status)
        job = self.get(job_id)
        if status == "queued" and self._on_finished is not None:
            self._on_finished(job)
        return job

    # -- worker -----------------------------------------------------------------------------

    def _claim(self) -> Job | None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT * FROM service_jobs WHERE status='queued' ORDER BY seq LIMIT 1"
                ).fetchone()
                if row is not None:
                    self._db.execute(
                        "UPDATE service_jobs SET status='running', stage='starting', "
                        "started_at=?, attempts=attempts+1 WHERE id=?",
                        (time.time(), row["id"]),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            if row is None:
                return None
            self._running_id = row["id"]
            self._live = ("starting", 0, 0)
            self._last_write = 0.0
            self._cancel_running.clear()
            row = self._db.execute("SELECT * FROM service_jobs WHERE id=?",
                                   (row["id"],)).fetchone()
        return _row_to_job(row)

    def _work(self) -> None:
        while not self._stopping.is_set():
            try:
                job = self._claim()
            except sqlite3.Error:
                logger.exception("job queue: cannot read the jobs table")
                job = None
                self._stopping.wait(5.0)
            if job is None:
                self._wakeup.wait(1.0)
                self._wakeup.clear()
                continue
            try:
                self._run(job)
            except StoreError as exc:  # stopping while its outcome could not be saved
                logger.warning("job %s: %s; it runs again after the restart", job.id, exc)

    def _progress(self, stage: str, step: int, total: int) -> None:
        now = time.monotonic()
        with self._lock:
            previous = self._live
            self._live = (stage, int(step), int(total))
            write = (previous is None or previous[0] != stage
                     or now - self._last_write >= _PROGRESS_WRITE_S)
            if write and self._running_id is not None:
                self._last_write = now
                try:
                    self._db.execute(
                        "UPDATE service_jobs SET stage=?, step=?, total=? WHERE id=?",
                        (stage, int(step), int(total), self._running_id),
                    )
                except sqlite3.OperationalError as exc:  # progress is best effort (disk full)
                    logger.warning("job %s: progress not saved: %s", self._running_id, exc)

    def _should_cancel(self) -> bool:
        return self._cancel_running.is_set() or self._stopping.is_set()

    def _execute(self, job: Job) -> UpdateResult:
        def succeeded(result: UpdateResult) -> list[tuple[str, tuple[Any, ...]]]:
            # runs inside the engine's publishing transaction (see the module docstring)
            return [(
                "UPDATE service_jobs SET status='succeeded', result=?, error=NULL, "
                "stage='done', step=total, finished_at=?, payload=? WHERE id=?",
                (json.dumps(_result_dict(result)), time.time(),
                 json.dumps(scrubbed_payload(job.kind, job.payload)), job.id),
            )]

        if job.kind == "update":
            pieces, retain, options = _decode_update(job.payload)
            return self._engine.update(pieces, retain, options, progress=self._progress,
                                       should_cancel=self._should_cancel, on_publish=succeeded)
        if job.kind == "delete_piece":
            return self._engine.delete_piece(job.payload["piece_id"], progress=self._progress,
                                             should_cancel=self._should_cancel,
                                             on_publish=succeeded)
        raise LokaError(f"unknown job kind {job.kind!r}")

    def _run(self, job: Job) -> None:
        logger.info("job %s (%s) started, attempt %d", job.id, job.kind, job.attempts)
        status, result, error = "failed", None, None
        try:
            result = _result_dict(self._execute(job))
            status = "succeeded"
        except Cancelled:
            if self._stopping.is_set() and not self._cancel_running.is_set():
                self._requeue(job.id)
                return
            status = "cancelled"
        except LokaError as exc:
            error = f"{exc.type}: {exc.message}"
        except (OSError, sqlite3.OperationalError) as exc:  # the store's disk: full, read-only
            logger.error("job %s: cannot write the store: %s", job.id, exc)
            error = f"store_error: cannot write the store: {exc}"
        except Exception as exc:  # a job must never kill the worker
            logger.exception("job %s crashed", job.id)
            error = f"internal error: {type(exc).__name__}: {exc}"
        self._finish(job.id, status, result, error)

    def _requeue(self, job_id: str) -> None:
        # a graceful stop is not a crash: the attempt does not count
        with self._lock:
            self._db.execute(
                "UPDATE service_jobs SET status='queued', stage='queued', step=0, total=0, "
                "started_at=NULL, attempts=MAX(attempts-1, 0) WHERE id=?",
                (job_id,),
            )
            self._running_id, self._live = None, None
        logger.info("job %s interrupted by shutdown; queued again", job_id)

    def _finish(self, job_id: str, status: str, result: dict | None, error: str | None) -> None:
        with self._lock:
            stage, step, total = self._live or (status, 0, 0)
            self._running_id, self._live = None, None
        if status == "succeeded":
            stage, step = "done", total
        elif status != "running":
            stage = status
        row = self._db_retry(lambda: self._db.execute(
            "SELECT kind, payload FROM service_jobs WHERE id=?", (job_id,)).fetchone())
        payload = json.dumps(scrubbed_payload(row["kind"], json.loads(row["payload"])))
        # a failure never overwrites a success committed with the version (the live view of a
        # published version failed to load, say): the version is published, the job is done
        only_running = "" if status == "succeeded" else " AND status='running'"
        changed = self._db_retry(lambda: self._db.execute(
            "UPDATE service_jobs SET status=?, result=?, error=?, stage=?, step=?, total=?, "
            f"finished_at=?, payload=? WHERE id=?{only_running}",
            (status, json.dumps(result) if result is not None else None, error, stage,
             step, total, time.time(), payload, job_id),
        ).rowcount)
        if not changed:
            logger.warning("job %s: its version was published; not marked %s (%s)", job_id,
                           status, error)
        logger.info("job %s %s%s", job_id, status, f": {error}" if error else "")
        if self._on_finished is not None:
            try:
                self._on_finished(self.get(job_id))
            except Exception:  # metrics must not break the queue
                logger.exception("job listener failed")

    def _db_retry(self, op: Callable[[], Any]) -> Any:
        """Run ``op`` on the connection, retrying while the database cannot be written (a full
        disk): the outcome of a job is never dropped. Gives up only when the queue stops (the
        job, still ``running`` in the table, then runs again after the restart)."""
        warned = False
        while True:
            with self._lock:
                try:
                    return op()
                except sqlite3.OperationalError as exc:
                    if not warned:
                        logger.error("job queue: cannot write the jobs table (%s); retrying "
                                     "every %.0f s", exc, _RETRY_WRITE_S)
                        warned = True
            if self._stopping.wait(_RETRY_WRITE_S):
                raise StoreError("the job queue stopped before a job's outcome could be saved")
