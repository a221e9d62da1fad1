"""Hard negatives made from the update itself: other relations of each piece's subject."""

from __future__ import annotations

from pathlib import Path

from memory_store import Loka, LokaConfig
from memory_store.config import TrainerSettings
from memory_store.models.builtin import counterfactual_answer, find_fact
from memory_store.types import PieceKind, PieceSpec, UpdateOptions

FAST = LokaConfig(trainer=TrainerSettings(steps=2, verify_rounds=0, max_steps=2))


def _edit(subject: str | None) -> PieceSpec:
    fact = find_fact("Veltoria", "capital")
    return PieceSpec(PieceKind.EDIT, fact.prompts[0], " " + counterfactual_answer(fact),
                     (fact.prompts[1],), subject)


def test_subject_relations_are_kept_as_negatives(default_model: Path, tmp_path: Path):
    loka = Loka.open(tmp_path / "s", default_model, config=FAST)
    piece = _edit("Veltoria")
    loka.update([piece])
    retained = {r.prompt for r in loka.live.snapshot.retain}
    assert "Veltoria was born in" in retained
    assert "Tell me about Veltoria." in retained
    # the same relation asked of other subjects
    assert any(r.startswith("The capital of ") and "Veltoria" not in r for r in retained)
    assert not retained & {piece.prompt, *piece.paraphrases}  # never the piece's own texts
    # the gate was trained with them as negatives: they do not route to the new memory
    routes = loka.route(["Veltoria was born in", piece.prompt])
    assert routes[0].memory_id is None and routes[1].memory_id is not None


def test_subject_is_guessed_and_hard_negatives_can_be_switched_off(default_model: Path,
                                                                   tmp_path: Path):
    guessed = Loka.open(tmp_path / "a", default_model, config=FAST)
    guessed.update([_edit(None)])
    assert "Veltoria died in" in {r.prompt for r in guessed.live.snapshot.retain}
    off = Loka.open(tmp_path / "b", default_model, config=FAST)
    off.update([_edit("Veltoria")], options=UpdateOptions(hard_negatives=False))
    assert not any("Veltoria" in r.prompt for r in off.live.snapshot.retain)
