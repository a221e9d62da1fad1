"""Crash safety: SIGKILL a real server while a job trains, inside the transaction that publishes
its version, and just after that transaction commits; every job accepted with 202 takes effect
exactly once and the codebook is always one published version.

One scenario, in stages that run in file order on one server and one store:

1. ``P`` (an edit) is applied: version 1. ``A`` (a slow edit) and ``B`` (deleting ``P``'s piece)
   are accepted; the server is killed while ``A`` trains.
2. Restarted with ``LOKA_FAULT=sleep_before_commit``: ``A`` runs again and is killed inside the
   publishing transaction. Nothing of version 2 may be visible.
3. Restarted with ``LOKA_FAULT=sleep_after_commit``: ``A`` runs again, commits version 2 and is
   killed before the worker records anything. ``A`` must already be ``succeeded``.
4. Still armed: ``B`` commits version 3 and is killed the same way. ``A`` must not run again.
5. Restarted clean: ``P``, ``A`` and ``B`` succeeded once each; versions 1, 2, 3; the store
   passes ``loka store check`` for every version.

Between stages the server is down and the store is read straight from its SQLite file.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from harness import (
    REPO_ROOT,
    LokaServer,
    accepted,
    job_rows,
    read_db,
    wait_job,
    wait_status,
)

from memory_store.codebook.check import check_store
from memory_store.models.builtin import FACTS, counterfactual_answer

pytestmark = pytest.mark.slow

FAULT_SLEEP_S = "300"  # far longer than the test waits: the process dies in the middle of it


@dataclass
class Scenario:
    server: LokaServer
    jobs: dict[str, str] = field(default_factory=dict)  # name -> job id
    piece_p: str = ""  # the piece of P, deleted by B
    piece_a: str = ""


def edit(fact_index: int, **options: object) -> dict:
    fact = FACTS[fact_index]
    return {"edits": [{"prompt": fact.prompt, "target": " " + counterfactual_answer(fact)}],
            "options": options}


@pytest.fixture(scope="module")
def scenario(make_server: Callable[..., LokaServer]) -> Iterator[Scenario]:
    server = make_server({"LOKA_JOB_MAX_ATTEMPTS": "5"})
    server.start()
    yield Scenario(server)
    server.stop()


def restart(server: LokaServer, fault: str | None) -> int:
    """Start again (with ``LOKA_FAULT`` armed or not); the log offset of this start."""
    if fault is None:
        server.env.pop("LOKA_FAULT", None)
    else:
        server.env["LOKA_FAULT"] = f"{fault}:{FAULT_SLEEP_S}"
    offset = len(server.log())
    server.start()
    return offset


def assert_one_published_version(db: Path, head: int) -> None:
    """The head is a published version whose rows are exactly what its metadata says, and no
    row belongs to a version that was never published (a half-done publish)."""
    versions = {r["version"]: r for r in read_db(db, "SELECT * FROM versions")}
    assert read_db(db, "SELECT version FROM head")[0]["version"] == head
    assert sorted(versions) == list(range(1, head + 1)), versions
    live = "added_in <= ? AND (removed_in IS NULL OR removed_in > ?)"
    n_mem = read_db(db, f"SELECT COUNT(*) AS n FROM memories WHERE {live}", (head, head))[0]["n"]
    n_pc = read_db(db, f"SELECT COUNT(*) AS n FROM pieces WHERE {live}", (head, head))[0]["n"]
    assert (n_mem, n_pc) == (versions[head]["n_memories"], versions[head]["n_pieces"])
    for table in ("memories", "pieces", "retain"):
        stray = read_db(db, f"SELECT COUNT(*) AS n FROM {table} WHERE added_in > ? "
                            "OR removed_in > ?", (head, head))[0]["n"]
        assert stray == 0, f"{table} has rows of an unpublished version"
    report = check_store(db.parent, all_versions=True)
    assert report.ok, report.problems


def test_1_kill_while_a_job_trains(scenario: Scenario) -> None:
    server = scenario.server
    with server.client() as client:
        p = accepted(client.post("/v1/updates", json=edit(0, steps=20)))
        done = wait_job(client, p)
        assert done["status"] == "succeeded", done
        assert done["result"]["codebook_version"] == 1
        scenario.piece_p = done["result"]["pieces_added"][0]
        # a tiny learning rate never reaches the target: all 60 steps run (a few seconds)
        a = accepted(client.post("/v1/updates",
                                 json=edit(7, steps=60, learning_rate=1e-6)))
        b = accepted(client.delete(f"/v1/knowledge/{scenario.piece_p}"))
        scenario.jobs = {"P": p, "A": a, "B": b}
        wait_status(client, a, ("running",),
                    until=lambda j: j["progress"]["stage"] == "train"
                    and j["progress"]["step"] > 0)
    server.kill()
    rows = job_rows(server.db_path)
    assert (rows[a]["status"], rows[a]["attempts"]) == ("running", 1)
    assert (rows[b]["status"], rows[b]["attempts"]) == ("queued", 0)
    assert_one_published_version(server.db_path, head=1)


def test_2_kill_inside_the_publishing_transaction(scenario: Scenario) -> None:
    server, a = scenario.server, scenario.jobs["A"]
    offset = restart(server, "sleep_before_commit")
    server.wait_log(r"LOKA_FAULT before_commit version 2", timeout=120, since=offset)
    server.kill()
    rows = job_rows(server.db_path)
    assert (rows[a]["status"], rows[a]["attempts"]) == ("running", 2)
    # the transaction died with the process: version 2 never existed
    assert_one_published_version(server.db_path, head=1)


def test_3_kill_just_after_the_commit(scenario: Scenario) -> None:
    server, a = scenario.server, scenario.jobs["A"]
    offset = restart(server, "sleep_after_commit")
    server.wait_log(r"LOKA_FAULT after_commit version 2", timeout=120, since=offset)
    server.kill()
    rows = job_rows(server.db_path)
    # marked done in the transaction that published its version: it will not run again
    assert rows[a]["status"] == "succeeded", rows[a]
    assert rows[a]["result"]["codebook_version"] == 2
    assert rows[a]["attempts"] == 3
    assert rows[scenario.jobs["B"]]["status"] == "queued"
    assert_one_published_version(server.db_path, head=2)
    scenario.piece_a = rows[a]["result"]["pieces_added"][0]


def test_4_kill_after_a_deletion_commits(scenario: Scenario) -> None:
    server, b = scenario.server, scenario.jobs["B"]
    offset = restart(server, "sleep_after_commit")
    server.wait_log(r"LOKA_FAULT after_commit version 3", timeout=120, since=offset)
    server.kill()
    # only B ran in this start: A was not picked up again
    started = server.log()[offset:].count(" started, attempt ")
    assert started == 1, server.log()[offset:]
    rows = job_rows(server.db_path)
    assert (rows[b]["status"], rows[b]["attempts"]) == ("succeeded", 1)
    assert rows[b]["result"]["codebook_version"] == 3
    assert rows[b]["result"]["pieces_removed"] == [scenario.piece_p]
    assert_one_published_version(server.db_path, head=3)


def test_5_every_accepted_job_took_effect_exactly_once(scenario: Scenario) -> None:
    server = scenario.server
    offset = restart(server, None)
    with server.client() as client:
        jobs = {j["id"]: j for j in client.get("/v1/jobs").json()["jobs"]}
        assert set(jobs) == set(scenario.jobs.values())
        assert all(j["status"] == "succeeded" for j in jobs.values()), jobs
        versions = [(v["version"], v["reason"])
                    for v in client.get("/v1/codebook/versions").json()["versions"]]
        assert versions == [(1, "update: 1 pieces"), (2, "update: 1 pieces"),
                            (3, f"delete piece {scenario.piece_p}")]
        assert [jobs[scenario.jobs[n]]["result"]["codebook_version"] for n in "PAB"] == [1, 2, 3]
        pieces = client.get("/v1/knowledge").json()
        assert pieces["codebook_version"] == 3
        assert [p["id"] for p in pieces["pieces"]] == [scenario.piece_a]
    assert " started, attempt " not in server.log()[offset:]  # nothing ran again
    server.stop()
    done = subprocess.run([sys.executable, "-m", "service.cli", "store", "check", "--store",
                           str(server.store_dir), "--all-versions"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert '"ok": true' in done.stdout


def test_no_job_is_lost_when_killed_right_after_the_202(scenario: Scenario) -> None:
    """An accepted job is in the table before the 202 is sent: a kill right after it loses
    nothing (the job runs after the restart)."""
    server = scenario.server
    restart(server, None)
    with httpx.Client(base_url=server.url, timeout=60) as client:
        job = accepted(client.post("/v1/updates", json=edit(14, steps=5)))
        server.kill()
    assert job_rows(server.db_path)[job]["status"] in ("queued", "running")
    restart(server, None)
    with server.client() as client:
        done = wait_job(client, job)
        assert done["status"] == "succeeded", done
        assert done["result"]["codebook_version"] == 4
    server.stop()
    assert check_store(server.store_dir, all_versions=True).ok
