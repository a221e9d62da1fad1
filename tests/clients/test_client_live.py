"""The sync and async clients against a real server (see ``conftest.live_server``).

The knowledge-changing tests run in file order and share one update: submit, wait, inspect,
delete a piece, delete a memory, roll back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import pytest
from harness import LokaServer
from loka_client import (
    AsyncClient,
    Client,
    Conflict,
    Edit,
    Forbidden,
    Job,
    JobFailed,
    NotFound,
    Unauthorized,
    ValidationError,
)

from memory_store.models.builtin.corpus import FACTS, Fact

logger = logging.getLogger(__name__)

pytestmark = pytest.mark.slow

STEPS = 30  # enough to exercise training; the tests check the API, not the edit's quality


def _other_answer(fact: Fact) -> str:
    """Another fact's answer for the same relation: a natural counterfactual edit target."""
    return next(f.answer for f in FACTS if f.relation == fact.relation and f.answer != fact.answer)


def _edit(fact: Fact) -> Edit:
    return Edit(
        prompt=fact.prompt, target=" " + _other_answer(fact), paraphrases=list(fact.prompts[1:3])
    )


FACT_A = FACTS[0]
FACT_B = next(f for f in FACTS if f.relation != FACT_A.relation)


@dataclass(frozen=True)
class Edited:
    """The finished shared update and what it was given."""

    job: Job
    progress: list[Job]
    edits: tuple[Edit, Edit]


@pytest.fixture(scope="module")
def edited(client: Client) -> Edited:
    """Two edits submitted as one update, waited for."""
    edits = (_edit(FACT_A), _edit(FACT_B))
    queued = client.update(
        edits=list(edits),
        retain=[{"prompt": FACTS[-1].prompt, "target": FACTS[-1].target}],
        options={"steps": STEPS},
    )
    assert queued.status == "queued"
    progress: list[Job] = []
    job = client.wait_for_job(
        queued.id, timeout=300, poll_interval=0.2, on_progress=progress.append
    )
    return Edited(job=job, progress=progress, edits=edits)


# ---- service -------------------------------------------------------------------------------


def test_health_ready_models_metrics(client: Client) -> None:
    assert client.health().status == "ok"
    assert client.ready().status == "ok"
    assert client.wait_until_ready(timeout=5).status == "ok"
    ids = {m.id for m in client.models().data}
    assert {"loka", "base"} <= ids
    assert client.model("base").id == "base"
    assert "# TYPE" in client.metrics()


def test_generate_base_and_auto(client: Client) -> None:
    base = client.generate(FACT_A.prompt, max_new_tokens=6, memory="none")
    assert isinstance(base.text, str) and base.memory_id is None
    assert base.usage is not None and 1 <= base.usage.completion_tokens <= 6
    assert base.usage.prompt_tokens > 0 and base.codebook_version >= 0
    auto = client.generate(FACT_A.prompt, max_new_tokens=6, stop=["\n"])
    assert isinstance(auto.gate, float)
    logger.info("base: %r, auto: %r", base.text, auto.text)


def test_route(client: Client) -> None:
    routed = client.route(FACT_A.prompt)
    assert 0.0 <= routed.gate <= 1.0
    assert routed.memory_id is None or routed.memory_id.startswith("mem_")


# ---- errors --------------------------------------------------------------------------------


def test_unknown_ids_are_not_found(client: Client) -> None:
    with pytest.raises(NotFound) as info:
        client.memory("mem_999999")
    assert info.value.status_code == 404 and info.value.type == "not_found"
    with pytest.raises(NotFound):
        client.generate("Hello", memory="mem_999999")
    with pytest.raises(NotFound):
        client.job("job_" + "0" * 32)
    with pytest.raises(NotFound):
        client.piece("pc_999999")


def test_invalid_values_name_the_field(client: Client) -> None:
    with pytest.raises(ValidationError) as info:
        client.generate("")
    assert info.value.status_code == 422 and info.value.field == "prompt"
    with pytest.raises(ValidationError) as info:
        client.generate("Hello", max_new_tokens=0)
    assert info.value.field == "max_new_tokens"
    with pytest.raises(ValidationError) as info:
        client.update(edits=[{"prompt": "A is", "target": "   "}])
    assert info.value.field == "edits.0.target"


def test_tokens(live_server: LokaServer) -> None:
    with Client(live_server.url) as anonymous, pytest.raises(Unauthorized) as info:
        anonymous.generate("Hello")
    assert info.value.status_code == 401
    with Client(live_server.url, api_token="wrong") as wrong, pytest.raises(Forbidden):
        wrong.codebook()
    # the API token alone is used for everything: reads pass, knowledge changes are refused
    with Client(live_server.url, api_token=live_server.api_token) as reader:
        assert reader.codebook().version >= 0
        with pytest.raises(Forbidden) as info:
            reader.update(edits=[_edit(FACT_A)])
        assert info.value.status_code == 403
    # health and readiness need no token
    with Client(live_server.url) as anonymous:
        assert anonymous.health().status == "ok"


# ---- knowledge changes ---------------------------------------------------------------------


def test_update_and_wait(edited: Edited) -> None:
    job = edited.job
    assert job.status == "succeeded" and job.done and job.error is None
    assert job.result is not None and job.result.codebook_version >= 1
    assert job.result.memories_created
    assert len(job.result.pieces_added) == 2
    assert edited.progress and edited.progress[-1].status == "succeeded"
    assert job.created_at is not None and job.finished_at is not None


def test_reads_after_update(client: Client, edited: Edited) -> None:
    # other test modules may change knowledge on the same server: check this update's traces
    result = edited.job.result
    assert result is not None
    info = client.codebook()
    assert info.version >= result.codebook_version and info.n_pieces >= 2 and info.model
    memories = {m.id: m for m in client.memories()}
    assert set(result.memories_created) <= set(memories)
    detail = client.memory(result.memories_created[0])
    assert detail.pieces and {p.id for p in detail.pieces} == set(detail.piece_ids)
    assert detail.kind == "edit" and detail.n_pieces == len(detail.piece_ids)
    mine = [p for p in client.knowledge() if p.id in result.pieces_added]
    assert {(p.prompt, p.target) for p in mine} == {(e.prompt, e.target) for e in edited.edits}
    assert all(p.kind == "edit" for p in client.knowledge(memory_id=detail.id))
    assert client.knowledge(kind="unlearn") == []
    assert result.codebook_version in [v.version for v in client.versions().versions]
    assert any(j.id == edited.job.id for j in client.jobs())
    assert all(j.status == "succeeded" for j in client.jobs(status="succeeded"))


def test_generate_with_a_memory(client: Client, edited: Edited) -> None:
    memory_id = client.memories()[0].id
    out = client.generate(FACT_A.prompt, max_new_tokens=4, memory=memory_id)
    assert out.memory_id == memory_id
    assert out.codebook_version == client.codebook().version
    logger.info("with %s: %r (edit target %r)", memory_id, out.text, edited.edits[0].target)


def test_cancel_a_queued_job(client: Client, edited: Edited) -> None:
    # the first job keeps the worker busy, so the second is still queued when cancelled
    busy = client.update(edits=[_edit(FACTS[2])], options={"steps": STEPS})
    queued = client.update(edits=[_edit(FACTS[3])], options={"steps": STEPS})
    cancelled = client.cancel_job(queued.id)
    assert cancelled.status in ("cancelled", "running") and cancelled.cancel_requested
    with pytest.raises(JobFailed) as info:
        client.wait_for_job(queued.id, timeout=300, poll_interval=0.2)
    assert info.value.job.status == "cancelled"
    with pytest.raises(Conflict):
        client.cancel_job(queued.id)  # already finished
    with contextlib.suppress(Conflict):  # Conflict: it had already finished
        client.cancel_job(busy.id)  # running: it stops at its next check, publishing nothing
    try:
        client.wait_for_job(busy.id, timeout=300, poll_interval=0.2)
    except JobFailed as exc:
        assert exc.job.status == "cancelled"


def test_delete_knowledge_memory_and_rollback(client: Client, edited: Edited) -> None:
    assert edited.job.result is not None
    restore_to = client.codebook().version
    pieces = {p.prompt: p for p in client.knowledge()}
    piece_b = pieces[FACT_B.prompt]

    job = client.delete_knowledge(piece_b.id)
    done = client.wait_for_job(job.id, timeout=300, poll_interval=0.2)
    assert done.result is not None and piece_b.id in done.result.pieces_removed
    assert FACT_B.prompt not in {p.prompt for p in client.knowledge()}

    piece_a = client.piece(pieces[FACT_A.prompt].id)
    removed = client.delete_memory(piece_a.memory_id)
    assert piece_a.memory_id in removed.memories_removed
    assert piece_a.memory_id not in {m.id for m in client.memories()}
    with pytest.raises(NotFound):
        client.delete_memory(piece_a.memory_id)

    restored = client.rollback(restore_to)
    assert restored.codebook_version > restore_to
    assert client.codebook().version == restored.codebook_version
    assert {p.prompt for p in client.knowledge()} == set(pieces)
    with pytest.raises(NotFound):
        client.rollback(10_000)


# ---- async ---------------------------------------------------------------------------------


def test_async_client(live_server: LokaServer) -> None:
    async def run() -> None:
        async with AsyncClient(
            live_server.url, api_token=live_server.admin_token, admin_token=live_server.admin_token
        ) as client:
            assert (await client.ready()).status == "ok"
            outs = await asyncio.gather(
                client.generate(FACT_A.prompt, max_new_tokens=3, memory="none"),
                client.generate(FACT_B.prompt, max_new_tokens=3, memory="none"),
                client.route(FACT_A.prompt),
            )
            assert all(isinstance(o.text, str) for o in outs[:2])
            info = await client.codebook()
            assert info.version >= 0
            assert isinstance(await client.memories(), list)
            with pytest.raises(NotFound):
                await client.memory("mem_999999")
            seen: list[Job] = []

            async def on_progress(job: Job) -> None:
                seen.append(job)

            finished = await client.jobs(status="succeeded")
            if finished:  # waiting on a finished job exercises the async poll without training
                done = await client.wait_for_job(finished[0].id, on_progress=on_progress)
                assert done.id == finished[0].id and seen

    asyncio.run(run())
