"""Two writers on one SQLite store: a CLI ``loka update`` while the server runs an update job.

Each plans on the head it read; the second to publish finds the head moved (compare-and-swap),
re-plans on the new head and publishes again, so both updates are present afterwards, and the
server (which follows the head) serves the final version.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from harness import REPO_ROOT, LokaServer, accepted, wait_job, wait_status

from memory_store.models.builtin import FACTS, counterfactual_answer


def test_cli_update_while_the_server_runs_a_job(make_server: Callable[..., LokaServer],
                                                tmp_path: Path, default_model: Path) -> None:
    server_fact, cli_fact = FACTS[3], FACTS[7]
    server = make_server()
    server.start()
    updates = tmp_path / "cli.jsonl"
    updates.write_text(json.dumps({"kind": "edit", "prompt": cli_fact.prompts[0],
                                   "target": " " + counterfactual_answer(cli_fact)}) + "\n")
    with server.client() as client:
        body = {"edits": [{"prompt": server_fact.prompts[0],
                           "target": " " + counterfactual_answer(server_fact)}],
                "options": {"steps": 40}}
        job_id = accepted(client.post("/v1/updates", json=body))
        wait_status(client, job_id, ("running", "succeeded"))
        env = {**os.environ, "LOKA_MODEL": str(default_model)}
        cli = subprocess.run(
            [sys.executable, "-m", "service.cli", "update", "--store", str(server.store_dir),
             "--file", str(updates), "--steps", "20"],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert cli.returncode == 0, cli.stderr[-3000:]
        job = wait_job(client, job_id)
        assert job["status"] == "succeeded", job
        head = max(job["result"]["codebook_version"], json.loads(cli.stdout)["codebook_version"])
        assert head == 2
        deadline = time.monotonic() + 10  # the server follows the head the CLI may have moved
        while client.get("/v1/codebook").json()["version"] != head:
            assert time.monotonic() < deadline, "the server never switched to the head"
            time.sleep(0.1)
        prompts = {p["prompt"] for p in client.get("/v1/knowledge").json()["pieces"]}
        assert prompts == {server_fact.prompts[0], cli_fact.prompts[0]}
    check = subprocess.run([sys.executable, "-m", "service.cli", "store", "check", "--store",
                            str(server.store_dir)], cwd=REPO_ROOT, capture_output=True,
                           text=True, timeout=300)
    assert check.returncode == 0, check.stdout + check.stderr
