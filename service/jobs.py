"""Knowledge-changing jobs: rows of ``service_jobs`` in the codebook's database (SQLite or
PostgreSQL), claimed by workers with leases, FIFO.

A job accepted with 202 is a row before the response is sent, so it survives a restart. Any
number of processes may run workers (``loka serve`` runs one, ``loka worker`` only that,
``loka serve --no-worker`` none). A worker claims the oldest queued job, or a running job whose
lease expired (its worker died), in one statement (``SELECT ... FOR UPDATE SKIP LOCKED`` on
PostgreSQL; a single ``UPDATE ... WHERE`` on SQLite), and renews the lease with a heartbeat
while it runs. A job that succeeds is marked ``succeeded`` in the very transaction that
publishes its codebook version (the engine's ``on_publish``), and that statement only matches
while this worker holds the lease: a worker that lost its job (it stalled past its lease and
another took the job over) cannot publish it, so every accepted job takes effect exactly once.
A job interrupted ``max_attempts`` times is failed. Cancellation reaches a running job through
the database (the heartbeat reads ``cancel_requested``) and the engine's ``should_cancel``.

An update's payload holds its unlearning targets, which are sensitive: it is kept only while the
job may still run, and replaced by a count of pieces when the job ends (``secure_delete`` zeroes
the old bytes in a SQLite file).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from memory_store.codebook.db import SqliteDatabase, open_database
from memory_store.codebook.store import Store
from memory_store.errors import (
    Cancelled,
    ConflictError,
    LeaseLost,
    LokaError,
    NotFound,
    StoreError,
)
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

JobKind = Literal["update", "delete_piece", "delete_memory", "rollback"]
FINISHED = ("succeeded", "failed", "cancelled")
_PROGRESS_WRITE_S = 0.5
_RETRY_WRITE_S = 1.0  # a final status that cannot be written (disk full) is retried this often
_POLL_S = 0.5  # an idle worker looks for jobs (of other processes too) this often



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
             "paraphrases": list(p.paraphrases), "subject": p.subject}
            for p in pieces
        ],
        "retain": [{"prompt": r.prompt, "target": r.target} for r in retain],
        "options": asdict(options),
    }


def _decode_update(payload: dict[str, Any]) -> tuple[list[PieceSpec], list[RetainSpec],
                                                      UpdateOptions]:
    pieces = [
        PieceSpec(kind=PieceKind(p["kind"]), prompt=p["prompt"], target=p["target"],
                  paraphrases=tuple(p["paraphrases"]), subject=p.get("subject"))
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


def _row_to_job(row: dict[str, Any]) -> Job:
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
    """Jobs in the codebook's database; ``start(worker=True)`` also runs a worker thread."""

    def __init__(
        self,
        store: Store,
        engine: Loka | None,
        *,
        max_attempts: int = 3,
        lease_s: float = 30.0,
        on_finished: Callable[[Job], None] | None = None,
    ) -> None:
        self._engine = engine
        self._max_attempts = max_attempts
        self._lease_s = lease_s
        self._on_finished = on_finished
        # its own connection: progress writes never wait behind a reader of the engine's
        self._db = open_database(store.root, store.database_url)
        self._errors = self._db.errors()
        if isinstance(self._db, SqliteDatabase):
            # scrubbed payloads leave no bytes behind in the file
            self._db.conn.execute("PRAGMA secure_delete=ON")
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._lock = threading.Lock()  # guards the fields below
        self._wakeup = threading.Event()
        self._stopping = threading.Event()
        self._cancel_running = threading.Event()
        self._running_id: str | None = None
        self._live: tuple[str, int, int] | None = None  # progress of the running job
        self._last_write = 0.0
        self._thread: threading.Thread | None = None
        self._heartbeat: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def start(self, worker: bool = True) -> None:
        """Tidy jobs left by stopped processes; with ``worker`` start claiming jobs."""
        self._recover()
        if not worker:
            return
        self._thread = threading.Thread(target=self._work, name="loka-jobs", daemon=True)
        self._thread.start()
        self._heartbeat = threading.Thread(target=self._beat, name="loka-jobs-lease",
                                           daemon=True)
        self._heartbeat.start()
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
                logger.warning("job worker still busy after %.0f s; its job re-runs when its "
                               "lease expires", timeout)
        if stopped:
            self._db.close()
        return stopped

    def _recover(self) -> None:
        """Expire the leases of this host's dead processes at once (a restart need not wait
        for them) and scrub the payloads of finished jobs."""
        host = socket.gethostname()
        dead = []
        for row in self._db.query_dicts(
                "SELECT id, lease_owner FROM service_jobs WHERE status='running'"):
            owner = row["lease_owner"] or ""
            parts = owner.split(":")
            if not owner or (len(parts) == 3 and parts[0] == host and parts[1].isdigit()
                             and not _pid_alive(int(parts[1]))):
                dead.append(row["id"])
        for job_id in dead:
            self._db.run("UPDATE service_jobs SET lease_until=0 WHERE id=? AND status='running'",
                         (job_id,))
        rows = self._db.query_dicts(
            "SELECT id, kind, payload FROM service_jobs WHERE kind='update' AND status IN "
            "('succeeded', 'failed', 'cancelled') AND payload NOT LIKE '%\"scrubbed\"%'")
        for row in rows:  # finished before payloads were scrubbed
            self._db.run("UPDATE service_jobs SET payload=? WHERE id=?",
                         (json.dumps(scrubbed_payload(row["kind"], json.loads(row["payload"]))),
                          row["id"]))
        if dead:
            logger.info("jobs of stopped processes on this host: %d to re-run", len(dead))

    # -- API ----------------------------------------------------------------------------------

    def submit(self, kind: JobKind, payload: dict[str, Any]) -> Job:
        """Persist a queued job and wake the worker."""
        job_id = new_job_id()
        try:
            self._db.run(
                "INSERT INTO service_jobs (id, kind, status, payload, created_at) "
                "VALUES (?, ?, 'queued', ?, ?)",
                (job_id, kind, json.dumps(payload), time.time()),
            )
        except self._errors as exc:  # a full disk: the job is not accepted
            raise StoreError(f"the job could not be stored, nothing was queued: {exc}") \
                from exc
        self._wakeup.set()
        logger.info("job %s (%s) queued", job_id, kind)
        return self.get(job_id)

    def get(self, job_id: str) -> Job:
        """The job ``job_id`` (NotFound if unknown)."""
        rows = self._db.query_dicts("SELECT * FROM service_jobs WHERE id=?", (job_id,))
        with self._lock:
            live = self._live if job_id == self._running_id else None
        if not rows:
            raise NotFound(f"no job {job_id}", field="id")
        job = _row_to_job(rows[0])
        if live is not None and job.status == "running":
            job = replace(job, stage=live[0], step=live[1], total=live[2])
        return job

    def wait(self, job_id: str, timeout: float | None = None, poll_s: float = 0.2) -> Job:
        """Wait until the job has finished; its last state (the CLI's synchronous changes)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if job.status in FINISHED:
                return job
            if deadline is not None and time.monotonic() > deadline:
                return job
            time.sleep(poll_s)

    def list_jobs(self, status: str | None = None, limit: int = 100) -> list[Job]:
        """Jobs, newest first, optionally of one status."""
        query = "SELECT * FROM service_jobs"
        args: tuple[Any, ...] = ()
        if status is not None:
            query += " WHERE status=?"
            args = (status,)
        query += " ORDER BY seq DESC LIMIT ?"
        rows = self._db.query_dicts(query, (*args, limit))
        with self._lock:
            running, live = self._running_id, self._live
        jobs = [_row_to_job(r) for r in rows]
        return [
            replace(j, stage=live[0], step=live[1], total=live[2])
            if live is not None and j.id == running and j.status == "running" else j
            for j in jobs
        ]

    def counts(self) -> dict[str, int]:
        """Number of jobs per status."""
        rows = self._db.query("SELECT status, COUNT(*) FROM service_jobs GROUP BY status")
        return {r[0]: int(r[1]) for r in rows}

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued job now, or ask a running one to stop (it ends ``cancelled``).

        Raises NotFound for an unknown id and ConflictError for a finished job.
        """
        now = time.time()
        with self._db.transaction(write=True) as tx:
            rows = tx.dicts("SELECT status, kind, payload FROM service_jobs WHERE id=?"
                            + self._db.for_update, (job_id,))
            if not rows:
                raise NotFound(f"no job {job_id}", field="id")
            row = rows[0]
            status = row["status"]
            if status in FINISHED:
                raise ConflictError(f"job {job_id} already {status}")
            if status == "queued":
                tx.execute(
                    "UPDATE service_jobs SET status='cancelled', stage='cancelled', "
                    "cancel_requested=1, finished_at=?, payload=? WHERE id=?",
                    (now, json.dumps(scrubbed_payload(row["kind"], json.loads(row["payload"]))),
                     job_id),
                )
            else:
                tx.execute("UPDATE service_jobs SET cancel_requested=1 WHERE id=?", (job_id,))
        with self._lock:
            if status != "queued" and self._running_id == job_id:
                self._cancel_running.set()
        logger.info("job %s: cancel requested (was %s)", job_id, status)
        job = self.get(job_id)
        if status == "queued" and self._on_finished is not None:
            self._on_finished(job)
        return job

    # -- worker -----------------------------------------------------------------------------

    def _expire(self, now: float) -> None:
        """Running jobs whose lease expired: cancelled if that was asked, failed if they were
        interrupted too often (the rest are claimed again by ``_claim``)."""
        expired = "status='running' AND (lease_until IS NULL OR lease_until < ?)"
        cancelled = self._db.run(
            "UPDATE service_jobs SET status='cancelled', finished_at=?, stage='cancelled' "
            f"WHERE {expired} AND cancel_requested=1", (now, now))
        failed = self._db.run(
            "UPDATE service_jobs SET status='failed', finished_at=?, stage='failed', error=? "
            f"WHERE {expired} AND attempts>=?",
            (now, "interrupted too many times (by restarts, or its worker died)", now,
             self._max_attempts))
        if cancelled or failed:
            logger.info("jobs whose worker stopped: %d failed, %d cancelled", failed, cancelled)

    def _claim(self) -> Job | None:
        now = time.time()
        self._expire(now)
        with self._db.transaction(write=True) as tx:
            rows = tx.dicts(
                "UPDATE service_jobs SET status='running', stage='starting', started_at=?, "
                "attempts=attempts+1, lease_owner=?, lease_until=?, step=0, total=0 "
                "WHERE seq = (SELECT seq FROM service_jobs WHERE status='queued' OR "
                "(status='running' AND (lease_until IS NULL OR lease_until < ?)) "
                f"ORDER BY seq LIMIT 1{self._db.skip_locked}) RETURNING *",
                (now, self.owner, now + self._lease_s, now))
        if not rows:
            return None
        job = _row_to_job(rows[0])
        with self._lock:
            self._running_id = job.id
            self._live = ("starting", 0, 0)
            self._last_write = 0.0
            self._cancel_running.clear()
        return job

    def _beat(self) -> None:
        """Renew the running job's lease; a lost lease or a cancel request stops the job."""
        while not self._stopping.wait(max(self._lease_s / 4, 0.05)):
            with self._lock:
                job_id = self._running_id
            if job_id is None:
                continue
            try:
                rows = self._db.query(
                    "SELECT cancel_requested FROM service_jobs WHERE id=?", (job_id,))
                held = self._db.run(
                    "UPDATE service_jobs SET lease_until=? WHERE id=? AND lease_owner=? "
                    "AND status='running'", (time.time() + self._lease_s, job_id, self.owner))
            except self._errors as exc:
                logger.warning("job %s: lease not renewed: %s", job_id, exc)
                continue
            with self._lock:
                if self._running_id != job_id:
                    continue
                if not held:
                    logger.warning("job %s: lease lost to another worker; stopping it", job_id)
                    self._cancel_running.set()
                elif rows and rows[0][0]:
                    self._cancel_running.set()

    def _work(self) -> None:
        while not self._stopping.is_set():
            try:
                job = self._claim()
            except self._errors:
                logger.exception("job queue: cannot read the jobs table")
                job = None
                self._stopping.wait(5.0)
            if job is None:
                self._wakeup.wait(_POLL_S)
                self._wakeup.clear()
                continue
            try:
                self._run(job)
            except StoreError as exc:  # stopping while its outcome could not be saved
                logger.warning("job %s: %s; it runs again after its lease expires", job.id, exc)

    def _progress(self, stage: str, step: int, total: int) -> None:
        now = time.monotonic()
        with self._lock:
            previous = self._live
            self._live = (stage, int(step), int(total))
            write = (previous is None or previous[0] != stage
                     or now - self._last_write >= _PROGRESS_WRITE_S)
            running = self._running_id
            if write:
                self._last_write = now
        if write and running is not None:
            try:
                self._db.run(
                    "UPDATE service_jobs SET stage=?, step=?, total=? WHERE id=? "
                    "AND lease_owner=?", (stage, int(step), int(total), running, self.owner))
            except self._errors as exc:  # progress is best effort (disk full)
                logger.warning("job %s: progress not saved: %s", running, exc)

    def _should_cancel(self) -> bool:
        return self._cancel_running.is_set() or self._stopping.is_set()

    def _execute(self, job: Job) -> UpdateResult:
        def succeeded(result: UpdateResult) -> list[tuple[str, tuple[Any, ...]]]:
            # runs inside the engine's publishing transaction (see the module docstring); it
            # matches no row if this worker lost the job, and then nothing is published
            return [(
                "UPDATE service_jobs SET status='succeeded', result=?, error=NULL, "
                "stage='done', step=total, finished_at=?, payload=? WHERE id=? "
                "AND lease_owner=? AND status='running'",
                (json.dumps(_result_dict(result)), time.time(),
                 json.dumps(scrubbed_payload(job.kind, job.payload)), job.id, self.owner),
            )]

        engine = self._engine
        assert engine is not None, "a job queue without an engine runs no jobs"
        common = {"progress": self._progress, "should_cancel": self._should_cancel,
                  "on_publish": succeeded}
        if job.kind == "update":
            pieces, retain, options = _decode_update(job.payload)
            return engine.update(pieces, retain, options, **common)
        if job.kind == "delete_piece":
            return engine.delete_piece(job.payload["piece_id"], **common)
        if job.kind == "delete_memory":
            return engine.delete_memory(job.payload["memory_id"], **common)
        if job.kind == "rollback":
            return engine.rollback(int(job.payload["version"]), on_publish=succeeded)
        raise LokaError(f"unknown job kind {job.kind!r}")

    def _run(self, job: Job) -> None:
        logger.info("job %s (%s) started, attempt %d", job.id, job.kind, job.attempts)
        status, result, error = "failed", None, None
        try:
            result = _result_dict(self._execute(job))
            status = "succeeded"
        except LeaseLost:
            logger.warning("job %s: taken over by another worker; not published here", job.id)
            self._forget()
            return
        except Cancelled:
            if self._stopping.is_set() and not self._cancel_running.is_set():
                self._requeue(job.id)
                return
            if not self._holds(job.id):
                logger.warning("job %s: taken over by another worker; stopped here", job.id)
                self._forget()
                return
            status = "cancelled"
        except LokaError as exc:
            error = f"{exc.type}: {exc.message}"
        except OSError as exc:  # the store's disk: full, read-only
            logger.error("job %s: cannot write the store: %s", job.id, exc)
            error = f"store_error: cannot write the store: {exc}"
        except Exception as exc:  # a job must never kill the worker
            if isinstance(exc, self._errors):
                error = f"store_error: cannot write the store: {exc}"
            else:
                logger.exception("job %s crashed", job.id)
                error = f"internal error: {type(exc).__name__}: {exc}"
        self._finish(job.id, status, result, error)

    def _holds(self, job_id: str) -> bool:
        rows = self._db.query("SELECT lease_owner FROM service_jobs WHERE id=?", (job_id,))
        return bool(rows) and rows[0][0] == self.owner

    def _forget(self) -> None:
        with self._lock:
            self._running_id, self._live = None, None

    def _requeue(self, job_id: str) -> None:
        # a graceful stop is not a crash: the attempt does not count
        self._db.run(
            "UPDATE service_jobs SET status='queued', stage='queued', step=0, total=0, "
            "started_at=NULL, lease_owner=NULL, lease_until=NULL, "
            "attempts=CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END "
            "WHERE id=? AND lease_owner=?", (job_id, self.owner))
        self._forget()
        logger.info("job %s interrupted by shutdown; queued again", job_id)

    def _finish(self, job_id: str, status: str, result: dict | None, error: str | None) -> None:
        with self._lock:
            stage, step, total = self._live or (status, 0, 0)
            self._running_id, self._live = None, None
        if status == "succeeded":
            stage, step = "done", total
        elif status != "running":
            stage = status
        rows = self._db_retry(lambda: self._db.query_dicts(
            "SELECT kind, payload FROM service_jobs WHERE id=?", (job_id,)))
        payload = json.dumps(scrubbed_payload(rows[0]["kind"], json.loads(rows[0]["payload"])))
        # a failure never overwrites a success committed with the version (the live view of a
        # published version failed to load, say): the version is published, the job is done
        only_running = "" if status == "succeeded" else " AND status='running'"
        changed = self._db_retry(lambda: self._db.run(
            "UPDATE service_jobs SET status=?, result=?, error=?, stage=?, step=?, total=?, "
            f"finished_at=?, payload=? WHERE id=? AND lease_owner=?{only_running}",
            (status, json.dumps(result) if result is not None else None, error, stage,
             step, total, time.time(), payload, job_id, self.owner),
        ))
        if not changed:
            logger.warning("job %s: its version was published or another worker holds it; "
                           "not marked %s (%s)", job_id, status, error)
        logger.info("job %s %s%s", job_id, status, f": {error}" if error else "")
        if self._on_finished is not None:
            try:
                self._on_finished(self.get(job_id))
            except Exception:  # metrics must not break the queue
                logger.exception("job listener failed")

    def _db_retry(self, op: Callable[[], Any]) -> Any:
        """Run ``op``, retrying while the database cannot be written (a full disk): the
        outcome of a job is never dropped. Gives up only when the queue stops (the job, still
        ``running`` in the table, then runs again once its lease expires)."""
        warned = False
        while True:
            try:
                return op()
            except self._errors as exc:
                if not warned:
                    logger.error("job queue: cannot write the jobs table (%s); retrying "
                                 "every %.0f s", exc, _RETRY_WRITE_S)
                    warned = True
            if self._stopping.wait(_RETRY_WRITE_S):
                raise StoreError("the job queue stopped before a job's outcome could be saved")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
