"""A worker killed mid-publish on PostgreSQL: nothing is served from a half-published version.

One HTTP-only replica and one worker (restarted between stages) on a real PostgreSQL:

1. An update publishes version 1; the replica serves it.
2. The worker is armed with ``LOKA_FAULT=sleep_before_commit``: the next update writes its
   files (adapter, index, gate: immutable, named by content) and its rows, then stops before
   the COMMIT. While it sleeps the replica (and a fresh reader) still see version 1 only; the
   worker is SIGKILLed there: the transaction dies with its connection, the files stay behind
   as orphans, and a replica restarted now serves version 1 and ``loka store check`` passes.
3. The worker restarts armed with ``sleep_after_commit`` and is SIGKILLed just after the
   COMMIT, before it records anything itself: the job is already ``succeeded`` (it committed
   with the version), and the replica learns of version 2 (the NOTIFY is delivered with the
   commit) and serves all of it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from harness import REPO_ROOT, LokaServer, accepted, wait_job

pytestmark = pytest.mark.slow

FAULT_SLEEP_S = "300"  # far longer than the test waits: the process dies in the middle of it
LEASE_S = "3"
FOLLOW_WAIT_S = 2.5  # longer than a replica's fallback poll (1 s): it would have switched


def _one(url: str, query: str, params: tuple = ()) -> tuple:
    with psycopg.connect(url) as conn:
        return conn.execute(query.replace("?", "%s"), params).fetchone()


def _referenced_files(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT gate_file, index_file FROM versions").fetchall()
    return {f for row in rows for f in row if f}


def _serves(replica: LokaServer) -> tuple[int, list[str]]:
    """The version the replica names and the prompts it lists (one response)."""
    with replica.client() as client:
        listed = client.get("/v1/knowledge").json()
    return listed["codebook_version"], sorted(p["prompt"] for p in listed["pieces"])


def _check(store: Path, url: str) -> None:
    env = {**os.environ, "LOKA_DATABASE_URL": url}
    done = subprocess.run([sys.executable, "-m", "service.cli", "store", "check", "--store",
                           str(store), "--all-versions"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_kill_mid_publish_serves_no_half_version(make_server: Callable[..., LokaServer],
                                                   pg_url: str, tmp_path: Path) -> None:
    store = tmp_path / "store"
    common = {"LOKA_DATABASE_URL": pg_url, "LOKA_JOB_LEASE_S": LEASE_S}
    replica = make_server({**common, "LOKA_WORKER": "false"}, store_dir=store)
    worker = make_server(dict(common), store_dir=store, argv=["-m", "service.worker"],
                         ready_log=r"worker \S+ ready")
    replica.start()
    worker.start()
    first, second = "The access code of vault 1 is", "The access code of vault 2 is"

    # 1. version 1
    with replica.client() as client:
        job = wait_job(client, accepted(client.post("/v1/updates", json={
            "edits": [{"prompt": first, "target": " 1001"}], "options": {"steps": 4}})))
    assert job["status"] == "succeeded", job
    deadline = time.monotonic() + 30
    while _serves(replica)[0] != 1:
        assert time.monotonic() < deadline, "the replica never followed version 1"
        time.sleep(0.05)
    worker.stop()

    # 2. killed between the files (and rows) and the COMMIT
    worker.env["LOKA_FAULT"] = f"sleep_before_commit:{FAULT_SLEEP_S}"
    offset = len(worker.log())
    worker.start()
    with replica.client() as client:
        second_job = accepted(client.post("/v1/updates", json={
            "edits": [{"prompt": second, "target": " 1002"}], "options": {"steps": 4}}))
    worker.wait_log(r"LOKA_FAULT before_commit version 2", 600, since=offset)
    files_before = {f"versions/{p.name}" for p in (store / "versions").iterdir()}
    orphans = files_before - _referenced_files(pg_url)
    assert orphans, "the half-published version wrote its index and gate first"
    deadline = time.monotonic() + FOLLOW_WAIT_S
    while time.monotonic() < deadline:  # the replica keeps serving version 1, all of it
        assert _serves(replica) == (1, [first])
        time.sleep(0.1)
    assert _one(pg_url, "SELECT version FROM head")[0] == 1
    assert _one(pg_url, "SELECT COUNT(*) FROM pieces WHERE added_in > 1")[0] == 0
    worker.kill()
    assert _one(pg_url, "SELECT version FROM head")[0] == 1
    assert _one(pg_url, "SELECT COUNT(*) FROM versions")[0] == 1
    assert _one(pg_url, "SELECT status FROM service_jobs WHERE id = ?",
                (second_job,))[0] == "running"
    replica.kill()  # the whole node: a replica started now reads only committed versions
    replica.start()
    assert _serves(replica) == (1, [first])
    _check(store, pg_url)  # the orphaned files are harmless

    # 3. killed just after the COMMIT (the job's completion committed with its version)
    worker.env["LOKA_FAULT"] = f"sleep_after_commit:{FAULT_SLEEP_S}"
    offset = len(worker.log())
    worker.start()
    worker.wait_log(r"LOKA_FAULT after_commit version 2", 600, since=offset)
    worker.kill()
    status, attempts = _one(pg_url, "SELECT status, attempts FROM service_jobs WHERE id = ?",
                            (second_job,))
    assert (status, attempts) == ("succeeded", 2)
    deadline = time.monotonic() + 30
    while _serves(replica)[0] != 2:
        assert time.monotonic() < deadline, "the replica never followed version 2"
        time.sleep(0.05)
    assert _serves(replica) == (2, sorted([first, second]))
    with replica.client() as client:
        out = client.post("/v1/generate", json={"prompt": second, "max_new_tokens": 2}).json()
    assert out["codebook_version"] == 2 and out["memory_id"] is not None
    replica.stop()
    _check(store, pg_url)
