"""Real LOKA Serve servers for the service tests (``tests/harness.py``, made by ``make_server``
of ``tests/conftest.py``): ``python -m service`` on free local ports, each on a fresh store.
``server`` is shared by the whole session (no tokens, small limits); tests that need other
settings or restarts start their own through ``start_server``. Facts to edit and unlearn come
from the default model's corpus, which the model was trained on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest
from harness import LokaServer, wait_job

from memory_store.models.builtin import FACTS, Fact, counterfactual_answer

# limits of the shared server, small so that the limit tests send small bodies
TEST_LIMITS = {
    "LOKA_MAX_BODY_BYTES": str(64 * 1024),
    "LOKA_MAX_PROMPT_CHARS": "500",
    "LOKA_MAX_NEW_TOKENS": "64",
    "LOKA_MAX_PARAPHRASES": "4",
    "LOKA_MAX_PIECES_PER_UPDATE": "6",
    "LOKA_MAX_TRAIN_STEPS": "300",
}


@pytest.fixture(scope="session")
def start_server(make_server: Callable[..., LokaServer]) -> Callable[..., LokaServer]:
    """Start a server with extra ``LOKA_*`` variables (``started=False``: only make it)."""

    def start(env: dict[str, str] | None = None, *, started: bool = True) -> LokaServer:
        server = make_server(env)
        if started:
            server.start()
        return server

    return start


@pytest.fixture(scope="session")
def server(start_server: Callable[..., LokaServer]) -> LokaServer:
    """The shared server: no tokens, the small ``TEST_LIMITS``."""
    return start_server(TEST_LIMITS)


@pytest.fixture(scope="session")
def client(server: LokaServer) -> Iterator[httpx.Client]:
    """An HTTP client of the shared server."""
    with server.client() as c:
        yield c


@pytest.fixture(scope="session")
def wait() -> Callable[..., dict]:
    """``wait(client, job_id)``: the finished job (see ``wait_job``)."""
    return wait_job


@dataclass(frozen=True)
class Facts:
    """Facts of the default model's corpus (which it knows) for the tests to change."""

    edit: Fact  # taught a new answer
    edit_target: str  # " " + the new answer
    unlearn: Fact  # forgotten
    unrelated: Fact  # must not change
    spare: tuple[Fact, ...]  # more facts, for jobs that are not about quality


@pytest.fixture(scope="session")
def known_facts() -> Facts:
    """Facts about different entities and relations, spread over the corpus."""
    picked: list[Fact] = []
    entities: set[str] = set()
    relations: set[str] = set()
    for fact in FACTS[::7]:
        if fact.entity not in entities and fact.relation not in relations:
            picked.append(fact)
            entities.add(fact.entity)
            relations.add(fact.relation)
    edit, unlearn, unrelated, *spare = picked
    return Facts(edit, " " + counterfactual_answer(edit), unlearn, unrelated, tuple(spare))
