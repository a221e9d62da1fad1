"""Fixtures for the engine tests: the built-in model (built once, cached) and a shared store
holding one edit and one unlearning request."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from memory_store import Loka
from memory_store.models.builtin import counterfactual_answer, ensure_default_model, find_fact
from memory_store.types import PieceKind, PieceSpec, UpdateResult


@pytest.fixture(scope="session")
def default_model() -> Path:
    return ensure_default_model(progress=False)


@dataclass
class Edited:
    loka: Loka
    store: Path
    result: UpdateResult
    edit: PieceSpec
    edit_heldout: str
    unlearn: PieceSpec
    unlearn_heldout: str


@pytest.fixture(scope="module")
def edited(default_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Edited:
    """A store after one update: an edit of Veltoria's capital, unlearning Quellan's sport."""
    store = tmp_path_factory.mktemp("store")
    loka = Loka.open(store, default_model)
    fe = find_fact("Veltoria", "capital")
    fu = find_fact("Quellan", "sport")
    edit = PieceSpec(PieceKind.EDIT, fe.prompts[0], " " + counterfactual_answer(fe),
                     (fe.prompts[1],))
    unlearn = PieceSpec(PieceKind.UNLEARN, fu.prompts[0], " " + fu.answer, (fu.prompts[1],))
    result = loka.update([edit, unlearn])
    return Edited(loka, store, result, edit, fe.prompts[2], unlearn, fu.prompts[2])
