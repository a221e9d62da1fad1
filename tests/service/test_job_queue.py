"""The job queue on a real store (SQLite), with a scripted engine (no model): order, cancellation,
progress, recovery after a crash, the attempt limit, failures."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from memory_store.codebook.store import Store
from memory_store.errors import Cancelled, ConflictError, InvalidInput, NotFound
from memory_store.types import PieceKind, PieceSpec, RetainSpec, UpdateOptions, UpdateResult
from service.jobs import Job, JobQueue, update_payload


class ScriptedEngine:
    """Stands in for ``Loka``'s writing side: records calls, blocks until released."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []
        self.release = threading.Event()
        self.started = threading.Event()
        self.fail_with: Exception | None = None
        self.version = 0

    def _run(self, name: str, arg: object, progress, should_cancel) -> UpdateResult:
        self.calls.append((name, arg))
        self.started.set()
        for step in range(1000):
            progress("train", step, 1000)
            if should_cancel():
                raise Cancelled("update cancelled")
            if self.release.wait(0.01):
                break
        if self.fail_with is not None:
            raise self.fail_with
        self.version += 1
        return UpdateResult(self.version, ("mem_000001",), (), (), ("pc_000001",), ())

    def update(self, pieces, retain, options, progress, should_cancel,
               on_publish=None) -> UpdateResult:
        return self._run("update", (pieces, retain, options), progress, should_cancel)

    def delete_piece(self, piece_id, progress, should_cancel,
                     on_publish=None) -> UpdateResult:
        return self._run("delete_piece", piece_id, progress, should_cancel)


PAYLOAD = update_payload(
    [PieceSpec(PieceKind.EDIT, "The sky is", " green", ("Q: sky?",))],
    [RetainSpec("The grass is", " green")],
    UpdateOptions(steps=3),
)


def wait_for(queue: JobQueue, job_id: str, statuses: tuple[str, ...]) -> Job:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        job = queue.get(job_id)
        if job.status in statuses:
            return job
        time.sleep(0.01)
    pytest.fail(f"{job_id} never reached {statuses}: {queue.get(job_id)}")


@pytest.fixture
def engine() -> ScriptedEngine:
    return ScriptedEngine()


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Store]:
    store = Store(tmp_path / "store")
    yield store
    store.close()


def test_fifo_progress_and_result(db: Store, engine: ScriptedEngine) -> None:
    finished: list[str] = []
    queue = JobQueue(db, engine, on_finished=lambda j: finished.append(j.id))  # type: ignore[arg-type]
    queue.start()
    try:
        first = queue.submit("update", PAYLOAD)
        second = queue.submit("delete_piece", {"piece_id": "pc_000001"})
        running = wait_for(queue, first.id, ("running",))
        assert running.started_at is not None
        engine.started.wait(10)
        deadline = time.monotonic() + 10
        while (live := queue.get(first.id)).stage != "train":  # progress shows while running
            assert time.monotonic() < deadline, live
            time.sleep(0.01)
        assert live.total == 1000
        assert queue.get(second.id).status == "queued"
        engine.release.set()
        done = wait_for(queue, second.id, ("succeeded",))
        assert queue.get(first.id).status == "succeeded"
        assert done.result is not None and done.result["codebook_version"] == 2
        assert [c[0] for c in engine.calls] == ["update", "delete_piece"]
        pieces, retain, options = engine.calls[0][1]  # type: ignore[misc]
        assert pieces[0].paraphrases == ("Q: sky?",) and retain[0].target == " green"
        assert options.steps == 3
        deadline = time.monotonic() + 10
        while len(finished) < 2 and time.monotonic() < deadline:  # called after the row is set
            time.sleep(0.01)
        assert finished == [first.id, second.id]
        assert [j.id for j in queue.list_jobs()] == [second.id, first.id]
        assert queue.counts() == {"succeeded": 2}
    finally:
        engine.release.set()
        queue.stop()


def test_cancel(db: Store, engine: ScriptedEngine) -> None:
    queue = JobQueue(db, engine)  # type: ignore[arg-type]
    queue.start()
    try:
        running = queue.submit("update", PAYLOAD)
        queued = queue.submit("update", PAYLOAD)
        wait_for(queue, running.id, ("running",))
        assert queue.cancel(queued.id).status == "cancelled"
        asked = queue.cancel(running.id)
        assert asked.cancel_requested
        assert wait_for(queue, running.id, ("cancelled",)).result is None
        with pytest.raises(ConflictError):
            queue.cancel(running.id)
        with pytest.raises(NotFound):
            queue.cancel("job_0123456789abcdef0123456789abcdef")
        assert len(engine.calls) == 1  # the cancelled queued job never ran
    finally:
        engine.release.set()
        queue.stop()


def test_engine_errors_fail_the_job(db: Store, engine: ScriptedEngine) -> None:
    queue = JobQueue(db, engine)  # type: ignore[arg-type]
    queue.start()
    try:
        engine.fail_with = InvalidInput("pieces[0].prompt must not be empty", field="pieces")
        engine.release.set()
        job = wait_for(queue, queue.submit("update", PAYLOAD).id, ("failed",))
        assert job.error == "invalid_input: pieces[0].prompt must not be empty"
        engine.fail_with = RuntimeError("boom")
        job = wait_for(queue, queue.submit("update", PAYLOAD).id, ("failed",))
        assert job.error is not None and "RuntimeError: boom" in job.error
        # the worker survived both
        engine.fail_with = None
        assert wait_for(queue, queue.submit("update", PAYLOAD).id, ("succeeded",))
    finally:
        queue.stop()


def crash(db: Store, job_ids: list[str], status: str = "running") -> None:
    """Leave jobs as a killed process would: marked ``status``, one attempt more."""
    with sqlite3.connect(db.db_path) as con:
        for job_id in job_ids:
            con.execute("UPDATE service_jobs SET status=?, attempts=attempts+1 WHERE id=?",
                        (status, job_id))


def test_recovery_after_a_crash(db: Store, engine: ScriptedEngine) -> None:
    queue = JobQueue(db, engine, max_attempts=2)  # type: ignore[arg-type]
    interrupted = queue.submit("update", PAYLOAD)
    waiting = queue.submit("update", PAYLOAD)
    doomed = queue.submit("update", PAYLOAD)
    crash(db, [interrupted.id])
    crash(db, [doomed.id])
    crash(db, [doomed.id])  # interrupted twice: reached max_attempts
    queue.stop()

    engine.release.set()
    queue = JobQueue(db, engine, max_attempts=2)  # type: ignore[arg-type]
    queue.start()
    try:
        assert wait_for(queue, interrupted.id, ("succeeded",)).attempts == 2
        assert wait_for(queue, waiting.id, ("succeeded",)).attempts == 1
        failed = queue.get(doomed.id)
        assert failed.status == "failed" and "restart" in (failed.error or "")
    finally:
        queue.stop()


def test_graceful_stop_requeues_the_running_job(db: Store, engine: ScriptedEngine) -> None:
    queue = JobQueue(db, engine)  # type: ignore[arg-type]
    queue.start()
    job = queue.submit("update", PAYLOAD)
    wait_for(queue, job.id, ("running",))
    assert queue.stop()
    with sqlite3.connect(db.db_path) as con:
        status, attempts = con.execute("SELECT status, attempts FROM service_jobs WHERE id=?",
                                       (job.id,)).fetchone()
    assert (status, attempts) == ("queued", 0)  # a stop is not a crash
