"""The whole journey over HTTP: generate, edit and unlearn, inspect, revert, roll back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest


def gen(client: httpx.Client, prompt: str, memory: str = "auto") -> dict:
    r = client.post("/v1/generate", json={"prompt": prompt, "max_new_tokens": 8,
                                          "memory": memory})
    assert r.status_code == 200, r.text
    return r.json()


def accepted(r: httpx.Response) -> str:
    """The job id of a 202 answer."""
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "queued"
    assert r.headers["location"] == f"/v1/jobs/{body['id']}"
    return body["id"]


@pytest.mark.slow
def test_journey(client: httpx.Client, known_facts: Any, wait: Callable[..., dict]) -> None:
    f = known_facts
    # -- before: the base model knows all three facts ----------------------------------------
    before = {name: gen(client, fact.prompt) for name, fact in
              (("edit", f.edit), ("unlearn", f.unlearn), ("unrelated", f.unrelated))}
    assert before["edit"]["text"].startswith(f.edit.target)
    assert before["unlearn"]["text"].startswith(f.unlearn.target)
    v0 = client.get("/v1/codebook").json()["version"]

    # -- an edit and an unlearn piece in one update -------------------------------------------
    job_id = accepted(client.post("/v1/updates", json={
        "edits": [{"prompt": f.edit.prompt, "target": f.edit_target,
                   "paraphrases": list(f.edit.prompts[1:3])}],
        "unlearn": [{"prompt": f.unlearn.prompt, "target": f.unlearn.target,
                     "paraphrases": list(f.unlearn.prompts[1:2])}],
        "retain": [{"prompt": f.unrelated.prompt, "target": f.unrelated.target}],
    }))
    job = wait(client, job_id)
    assert job["status"] == "succeeded", job
    assert job["error"] is None
    assert job["started_at"] and job["finished_at"] >= job["started_at"]
    v1 = job["result"]["codebook_version"]
    assert v1 == v0 + 1
    assert job["result"]["memories_created"]
    assert len(job["result"]["pieces_added"]) == 2
    assert job in client.get("/v1/jobs").json()["jobs"]

    # -- the served model changed where it should, and only there -----------------------------
    edited = gen(client, f.edit.prompt)
    assert edited["text"].startswith(f.edit_target), edited
    assert edited["memory_id"] is not None and edited["codebook_version"] == v1
    unlearned = gen(client, f.unlearn.prompt)
    assert f.unlearn.answer not in unlearned["text"], unlearned
    assert gen(client, f.unrelated.prompt)["text"] == before["unrelated"]["text"]
    # the frozen base model is untouched
    assert gen(client, f.edit.prompt, memory="none")["text"] == before["edit"]["text"]
    # a memory can be asked for by id
    assert gen(client, f.edit.prompt, memory=edited["memory_id"])["text"].startswith(
        f.edit_target)
    # the OpenAI endpoint serves the routed model too
    c = client.post("/v1/completions", json={"model": "loka", "prompt": f.edit.prompt,
                                             "max_tokens": 8, "temperature": 0}).json()
    assert c["choices"][0]["text"].startswith(f.edit_target)

    # -- routing is explained without generating ----------------------------------------------
    route = client.post("/v1/route", json={"prompt": f.edit.prompt}).json()
    assert route["memory_id"] == edited["memory_id"]
    assert route["codebook_version"] == v1
    assert client.post("/v1/route", json={"prompt": f.unrelated.prompt}).json()[
        "memory_id"] is None

    # -- memories and knowledge -----------------------------------------------------------------
    pieces = {p["kind"]: p for p in client.get("/v1/knowledge").json()["pieces"]}
    assert set(pieces) == {"edit", "unlearn"}
    assert pieces["edit"]["prompt"] == f.edit.prompt
    assert pieces["edit"]["target"] == f.edit_target
    assert pieces["unlearn"]["paraphrases"] == list(f.unlearn.prompts[1:2])
    assert client.get(f"/v1/knowledge/{pieces['edit']['id']}").json() == pieces["edit"]
    only_edits = client.get("/v1/knowledge", params={"kind": "edit"}).json()["pieces"]
    assert [p["id"] for p in only_edits] == [pieces["edit"]["id"]]
    memories = client.get("/v1/memories").json()
    assert memories["codebook_version"] == v1
    assert {m["id"] for m in memories["memories"]} >= {edited["memory_id"]}
    memory = client.get(f"/v1/memories/{pieces['edit']['memory_id']}").json()
    assert pieces["edit"]["id"] in [p["id"] for p in memory["pieces"]]
    assert memory["kind"] in ("edit", "mixed")
    assert {"min", "mean", "max"} <= set(memory["key_stats"])
    assert memory["n_pieces"] == len(memory["piece_ids"])
    codebook = client.get("/v1/codebook").json()
    assert (codebook["version"], codebook["n_pieces"]) == (v1, 2)

    # -- revert the edit: a job retrains its memory without it -----------------------------------
    job = wait(client, accepted(client.delete(f"/v1/knowledge/{pieces['edit']['id']}")))
    assert job["status"] == "succeeded", job
    assert job["result"]["pieces_removed"] == [pieces["edit"]["id"]]
    v2 = job["result"]["codebook_version"]
    assert v2 == v1 + 1
    assert gen(client, f.edit.prompt)["text"] == before["edit"]["text"]
    assert f.unlearn.answer not in gen(client, f.unlearn.prompt)["text"]
    assert client.get(f"/v1/knowledge/{pieces['edit']['id']}").status_code == 404

    # -- roll back to the version with the edit -------------------------------------------------
    job = wait(client, accepted(client.post("/v1/codebook/rollback", json={"version": v1})))
    assert job["status"] == "succeeded", job
    v3 = job["result"]["codebook_version"]
    assert v3 == v2 + 1
    assert gen(client, f.edit.prompt)["text"].startswith(f.edit_target)
    versions = client.get("/v1/codebook/versions").json()
    assert versions["current"] == v3
    assert [v["version"] for v in versions["versions"]][-3:] == [v1, v2, v3]

    # -- delete the memory that forgets: the answer comes back ---------------------------------
    unlearn_memory = client.get(f"/v1/knowledge/{pieces['unlearn']['id']}").json()["memory_id"]
    job = wait(client, accepted(client.delete(f"/v1/memories/{unlearn_memory}")))
    assert job["status"] == "succeeded", job
    assert job["result"]["memories_removed"] == [unlearn_memory]
    assert client.get(f"/v1/memories/{unlearn_memory}").status_code == 404
    assert gen(client, f.unlearn.prompt)["text"].startswith(f.unlearn.target)
