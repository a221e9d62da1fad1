"""Scale-out on one real PostgreSQL: 3 HTTP-only API replicas (``loka serve --no-worker``) and
2 workers (``loka worker``) share one codebook and one store directory.

30 updates are posted round-robin to the replicas; one worker is SIGKILLed inside the
transaction that publishes its first job (the job's completion commits with its version, so
the kill leaves neither), and the other worker takes the job over once its lease expires.
Every job must succeed exactly once (one version per job, each job's piece in the head
exactly once, nothing lost), every replica must serve the final version, and
``loka store check`` must pass.

The delay between a version's commit (its ``created_at``) and the moment each replica's
``/v1/codebook`` first names it is measured (a poller per replica) and written to the test's
log and to a JSON file (``LOKA_SCALE_RESULTS``, else the test's temporary directory); it is
not asserted: ``python -m benchmarks.scale head-switch`` runs this test and turns the file into
``benchmarks/results/scale/head_switch.{json,md}``.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psycopg
import pytest
from harness import REPO_ROOT, LokaServer, accepted, wait_job

from service.embedded import wait_ready

logger = logging.getLogger(__name__)

N_UPDATES = 30
N_REPLICAS = 3
STEPS = 4  # training steps per update: cheap, the test is about coordination
LEASE_S = 3.0
POLL_S = 0.02  # how often the test asks each replica for its version
ALL_JOBS_TIMEOUT_S = 1500.0


class VersionWatcher:
    """Polls one replica's ``/v1/codebook``; the wall-clock time each version was first seen."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.first_seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> VersionWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while not self._stop.is_set():
                try:
                    version = client.get("/v1/codebook").json()["version"]
                except (httpx.HTTPError, KeyError, ValueError):
                    version = None
                if version is not None:
                    self.first_seen.setdefault(int(version), time.time())
                self._stop.wait(POLL_S)


def _rows(url: str, query: str, params: tuple = ()) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(query.replace("?", "%s"), params).fetchall()


def _summary(delays: list[float]) -> dict[str, float]:
    ordered = sorted(delays)
    return {"n": len(ordered), "median_ms": 1000 * statistics.median(ordered),
            "p95_ms": 1000 * ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
            "max_ms": 1000 * ordered[-1], "mean_ms": 1000 * statistics.fmean(ordered)}


@pytest.mark.slow
def test_three_replicas_two_workers_one_killed(make_server: Callable[..., LokaServer],
                                               pg_url: str, tmp_path: Path) -> None:
    store = tmp_path / "store"
    common = {"LOKA_DATABASE_URL": pg_url, "LOKA_JOB_LEASE_S": str(LEASE_S)}
    replicas = [make_server({**common, "LOKA_WORKER": "false"}, store_dir=store)
                for _ in range(N_REPLICAS)]
    worker_argv = {"argv": ["-m", "service.worker"], "ready_log": r"worker \S+ ready"}
    # the first worker stops inside the publishing transaction of its first job
    doomed = make_server({**common, "LOKA_FAULT": "sleep_before_commit:600"}, store_dir=store,
                         **worker_argv)
    survivor = make_server(common, store_dir=store, **worker_argv)
    # the first replica creates the store; the others start together on it
    replicas[0].start()
    for proc in (*replicas[1:], doomed, survivor):
        proc.launch()
    for replica in replicas[1:]:
        assert replica.proc is not None
        wait_ready(replica.url, lambda r=replica: None if r.proc.poll() is None
                   else f"replica exited:\n{r.log_tail()}")
    for worker in (doomed, survivor):
        worker.wait_log(worker.ready_log or "", 600)
    watchers = [VersionWatcher(r.url).start() for r in replicas]

    prompts = [f"The access code of vault {i} is" for i in range(N_UPDATES)]
    jobs: list[str] = []
    clients = [r.client() for r in replicas]
    try:
        for i, prompt in enumerate(prompts):
            body = {"edits": [{"prompt": prompt, "target": f" {1000 + i}"}],
                    "options": {"steps": STEPS}}
            jobs.append(accepted(clients[i % N_REPLICAS].post("/v1/updates", json=body)))
        killed = doomed.wait_log(r"LOKA_FAULT before_commit version (\d+)", 600)
        doomed.kill()
        logger.info("worker SIGKILLed inside the publish of version %s", killed.group(1))
        done = {}
        deadline = time.monotonic() + ALL_JOBS_TIMEOUT_S
        for i, job_id in enumerate(jobs):
            # read from another replica than the one that accepted it: jobs are shared rows
            client = clients[(i + 1) % N_REPLICAS]
            done[job_id] = wait_job(client, job_id, max(1.0, deadline - time.monotonic()))
        failed = {j: d for j, d in done.items() if d["status"] != "succeeded"}
        assert not failed, failed
        head = _rows(pg_url, "SELECT version FROM head")[0][0]
        # every replica serves the head (the poller keeps asking; 60 s is only a guard)
        guard = time.monotonic() + 60
        while not all(head in w.first_seen for w in watchers):
            assert time.monotonic() < guard, [sorted(w.first_seen) for w in watchers]
            time.sleep(0.05)
    finally:
        for w in watchers:
            w.stop()
        for c in clients:
            c.close()

    # exactly once: one version per job, each job's piece in the head exactly once
    reasons = [r[0] for r in _rows(pg_url, "SELECT reason FROM versions ORDER BY version")]
    assert len(reasons) == N_UPDATES and all(r.startswith("update:") for r in reasons)
    assert head == N_UPDATES
    live = _rows(pg_url, "SELECT id, prompt FROM pieces WHERE removed_in IS NULL")
    assert sorted(p for _, p in live) == sorted(prompts)  # none lost, none twice
    added = [pid for d in done.values() for pid in d["result"]["pieces_added"]]
    assert sorted(added) == sorted(pid for pid, _ in live)
    attempts = dict(_rows(pg_url, "SELECT id, attempts FROM service_jobs"))
    assert sorted(attempts.values()) == [1] * (N_UPDATES - 1) + [2]  # the killed job re-ran
    for replica in replicas:
        with replica.client() as client:
            listed = client.get("/v1/knowledge").json()
        assert listed["codebook_version"] == head
        assert sorted(p["prompt"] for p in listed["pieces"]) == sorted(prompts)

    env = {**os.environ, "LOKA_DATABASE_URL": pg_url}
    check = subprocess.run([sys.executable, "-m", "service.cli", "store", "check", "--store",
                            str(store), "--all-versions"], cwd=REPO_ROOT, env=env,
                           capture_output=True, text=True, timeout=600)
    assert check.returncode == 0, check.stdout + check.stderr

    # the head-switch delay: commit -> each replica's /v1/codebook names the version
    created = dict(_rows(pg_url, "SELECT version, created_at FROM versions"))
    delays = [[seen - created[v] for v, seen in w.first_seen.items() if v in created]
              for w in watchers]
    final = [w.first_seen[head] - created[head] for w in watchers]
    result = {
        "replicas": N_REPLICAS, "workers": 2, "updates": N_UPDATES, "steps": STEPS,
        "engine": "postgresql (LISTEN/NOTIFY)", "poll_interval_ms": POLL_S * 1000,
        "head_switch_all_versions": _summary([d for ds in delays for d in ds]),
        "head_switch_per_replica": [_summary(ds) for ds in delays],
        "final_version": head,
        "final_version_delay_ms": [1000 * d for d in final],
        "final_version_spread_ms": 1000 * (max(final) - min(final)),
        "killed_in_publish_of_version": int(killed.group(1)),
        "cpu_count": os.cpu_count(),
    }
    logger.info("head-switch delay across replicas: %s", json.dumps(result))
    out = Path(os.environ.get("LOKA_SCALE_RESULTS") or tmp_path / "head_switch.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
