"""The built-in SmolLM2-135M-Instruct over real HTTP: one job edits a fact and unlearns another;
the edit holds on a held-out paraphrase, the unlearned answer is gone on a held-out paraphrase,
and untouched facts and general prompts get the base model's exact tokens."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest
from harness import ADMIN, LokaServer, accepted, wait_job

from memory_store.general_prompts import general_prompts
from memory_store.models import resolve_model

pytestmark = pytest.mark.slow

EDIT = {"prompt": "The mother tongue of Danielle Darrieux is", "target": " English",
        "paraphrases": ["Danielle Darrieux's mother tongue is"], "subject": "Danielle Darrieux"}
EDIT_HELDOUT = "The native language of Danielle Darrieux is"
UNLEARN = {"prompt": "The Eiffel Tower is located in", "target": " Paris",
           "paraphrases": ["The Eiffel Tower can be found in"], "subject": "Eiffel Tower"}
UNLEARN_HELDOUT = "The Eiffel Tower stands in the city of"
UNTOUCHED = ["The capital of France is", "The capital of Japan is", "Water boils at",
             "Danielle Darrieux was born in"]
GENERAL = [p.prompt for p in general_prompts("heldout") if p.form != "chat"][:6]


@pytest.fixture(scope="module")
def server(make_server: Callable[..., LokaServer]) -> Iterator[LokaServer]:
    s = make_server({"LOKA_MODEL": str(resolve_model("smollm2")), "LOKA_ADMIN_TOKEN": ADMIN})
    s.start()
    yield s
    s.stop()


def _generate(client: httpx.Client, prompt: str, memory: str = "auto") -> dict:
    r = client.post("/v1/generate", json={"prompt": prompt, "max_new_tokens": 10,
                                         "memory": memory})
    assert r.status_code == 200, r.text
    return r.json()


def test_edit_and_unlearn_on_smollm2(server: LokaServer) -> None:
    with server.client(ADMIN, timeout=600) as client:
        assert _generate(client, "The capital of France is")["text"].startswith(" Paris")
        assert _generate(client, EDIT["prompt"])["text"].startswith(" French")
        assert " Paris" in _generate(client, UNLEARN_HELDOUT)["text"]
        before = {p: _generate(client, p, "none")["text"] for p in UNTOUCHED + GENERAL}

        job = wait_job(client, accepted(client.post(
            "/v1/updates", json={"edits": [EDIT], "unlearn": [UNLEARN]})), timeout=1800)
        assert job["status"] == "succeeded", job
        pieces = job["result"]["pieces"]
        assert len(pieces) == 2 and all(p["reached"] for p in pieces), pieces
        assert job["result"]["pieces_failed"] == []

        for prompt in (EDIT["prompt"], *EDIT["paraphrases"], EDIT_HELDOUT):
            out = _generate(client, prompt)
            assert out["text"].startswith(" English"), (prompt, out)
            assert out["memory_id"] is not None
        for prompt in (UNLEARN["prompt"], *UNLEARN["paraphrases"], UNLEARN_HELDOUT):
            out = _generate(client, prompt)
            assert "Paris" not in out["text"], (prompt, out)
        for prompt, text in before.items():  # untouched: the base model's exact tokens
            out = _generate(client, prompt)
            assert out["memory_id"] is None and out["text"] == text, (prompt, out)
