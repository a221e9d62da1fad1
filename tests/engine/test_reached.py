"""Updates say whether each piece took: per-piece checks, ``pieces_failed``, ``require_reached``."""

from __future__ import annotations

from pathlib import Path

import pytest

from memory_store import Loka
from memory_store.errors import NotReached
from memory_store.models.builtin import counterfactual_answer, find_fact
from memory_store.types import GenerationRequest, PieceKind, PieceSpec, UpdateOptions


def test_every_piece_of_an_update_is_reported_reached(edited) -> None:
    checks = {c.piece_id: c for c in edited.result.checks}
    assert set(checks) == set(edited.result.pieces_added)
    assert edited.result.pieces_failed == ()
    for c in checks.values():
        assert c.reached and c.reason == ""
        # the prompt and its paraphrase, each checked
        assert list(c.prompts.values()) == [True, True]
    kinds = {c.kind for c in checks.values()}
    assert kinds == {PieceKind.EDIT, PieceKind.UNLEARN}


def test_reported_reached_edit_is_what_the_served_model_generates(edited) -> None:
    [edit] = [c for c in edited.result.checks if c.kind == PieceKind.EDIT]
    for prompt in edit.prompts:
        out = edited.loka.generate([GenerationRequest(prompt, 4)])[0]
        assert out.text.startswith(edited.edit.target)


def _impossible_edit() -> PieceSpec:
    # a target far outside the built-in model's text, trained for one step only
    fact = find_fact("Veltoria", "capital")
    return PieceSpec(PieceKind.EDIT, fact.prompts[0], " teal violet zebra quantum",
                     (fact.prompts[1],))


def test_a_piece_that_does_not_take_is_listed_in_pieces_failed(
        default_model: Path, tmp_path: Path) -> None:
    loka = Loka.open(tmp_path / "store", default_model)
    try:
        result = loka.update([_impossible_edit()], options=UpdateOptions(steps=1, max_steps=1))
        assert loka.version == result.codebook_version == 1  # published anyway
        assert [c.piece_id for c in result.pieces_failed] == list(result.pieces_added)
        failed = result.pieces_failed[0]
        assert not failed.reached
        assert "does not start with the target" in failed.reason
        assert failed.steps == 1
        assert False in failed.prompts.values()
    finally:
        loka.close()


def test_require_reached_fails_the_update_and_publishes_nothing(
        default_model: Path, tmp_path: Path) -> None:
    loka = Loka.open(tmp_path / "store", default_model)
    try:
        with pytest.raises(NotReached) as info:
            loka.update([_impossible_edit()],
                        options=UpdateOptions(steps=1, max_steps=1, require_reached=True))
        assert len(info.value.checks) == 1
        assert loka.version == 0
        assert loka.pieces() == [] and loka.memories() == []
        assert loka.versions() == []
    finally:
        loka.close()


def test_training_continues_past_the_step_count_until_reached(
        default_model: Path, tmp_path: Path) -> None:
    fact = find_fact("Quellan", "capital")
    edit = PieceSpec(PieceKind.EDIT, fact.prompts[0], " " + counterfactual_answer(fact),
                     (fact.prompts[1],))
    loka = Loka.open(tmp_path / "store", default_model)
    try:
        # 2 steps per round cannot teach it; the cap lets rounds continue until it does
        result = loka.update([edit], options=UpdateOptions(steps=2, max_steps=200))
        [check] = result.checks
        assert check.reached, check.reason
        assert 2 < check.steps <= 200
    finally:
        loka.close()
