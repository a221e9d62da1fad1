"""Fixtures of the serving-performance tests: the built-in model and a store of synthetic
memories whose random weights change the model's outputs (so a row served with the wrong
memory, or with none, shows)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from memory_store import Loka
from memory_store.codebook.synthetic import publish_synthetic
from memory_store.models.builtin import FACTS, ensure_default_model

N_MEMORIES = 12
B_STD = 1.0  # large enough that most memories change the greedy output


@dataclass
class Codebook:
    loka: Loka
    store: Path
    model: Path
    prompts: list[str]  # prompts[i] routes to memories[i]
    memories: list[str]
    other_prompts: list[str]  # prompts no memory is keyed on


@pytest.fixture(scope="session")
def default_model() -> Path:
    return ensure_default_model(progress=False)


@pytest.fixture(scope="module")
def codebook(default_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Codebook:
    store = tmp_path_factory.mktemp("perf-store")
    prompts = [f.prompts[0] for f in FACTS[::7]][:N_MEMORIES]
    loka = Loka.open(store, default_model)
    memories = [m for m, _ in publish_synthetic(loka, prompts, N_MEMORIES, b_std=B_STD)]
    loka.close()
    loka = Loka.open(store, default_model)
    others = [f.prompts[0] for f in FACTS[3::7]][:4]
    yield Codebook(loka, store, default_model, prompts, memories, others)
    loka.close()
