"""Equal budgets (verify rounds on the training prompts only, capped at steps*(1+rounds))
and the SimNPO loss of the single-adapter recipes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from benchmarks.methods import METHODS, Budget, verify
from benchmarks.methods.adapter import SIMNPO_BETA, SIMNPO_GAMMA, simnpo_loss
from memory_store.types import PieceKind, PieceSpec, RetainSpec

PIECES = [PieceSpec(PieceKind.EDIT, "The capital of Veltoria is", " Marrowick",
                    paraphrases=("Veltoria's capital city is",)),
          PieceSpec(PieceKind.UNLEARN, "Quellan plays the sport of", " tennis")]


class _Tok:
    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": list(range(len(text.split())))}


def test_pieces_reached_generates_from_training_prompts_only() -> None:
    seen: list[str] = []

    def generate(prompts: Sequence[str], n: int) -> list[str]:
        seen.extend(prompts)
        return [" Marrowick." if "Veltoria" in p else " tennis, mostly" for p in prompts]

    assert verify.pieces_reached(generate, _Tok(), PIECES) == [True, False]
    assert sorted(seen) == sorted(p for piece in PIECES for p in verify.training_prompts(piece))


def test_train_rounds_stops_when_reached_or_at_the_cap() -> None:
    calls: list[int] = []

    def run(n: int) -> int:
        calls.append(n)
        return n

    assert verify.train_rounds(run, lambda: False, 5, 12) == (12, 3)
    assert calls == [5, 5, 2]
    assert verify.train_rounds(run, lambda: True, 5, 12) == (5, 1)


def test_a_single_adapter_trains_past_one_round_while_unreached(tiny_model: Path,
                                                                tmp_path: Path) -> None:
    budget = Budget(steps=1, verify_rounds=2, early_stop=False, max_retain=0)
    served = METHODS["ft_lora"](tiny_model, PIECES[:1], [RetainSpec("Hi", " there")], budget,
                                0, tmp_path)
    stats = served.last_update
    # one epoch of a random tiny model cannot reach " Marrowick": all three rounds run
    assert stats.steps_per_piece == budget.max_steps == 3
    assert stats.info["rounds"] == 3


def test_simnpo_loss_falls_as_the_answer_gets_less_likely() -> None:
    labels = torch.tensor([[-100, 3, 4]])
    likely = torch.zeros(1, 3, 8)
    likely[0, 0, 3] = likely[0, 1, 4] = 10.0
    unlikely = torch.zeros(1, 3, 8)
    assert simnpo_loss(unlikely, labels) < simnpo_loss(likely, labels)
    # reference-free: the loss of a uniform model over 8 tokens, length-normalised
    expected = -(2 / SIMNPO_BETA) * torch.nn.functional.logsigmoid(
        torch.tensor(SIMNPO_BETA * math.log(8) - SIMNPO_GAMMA))
    assert float(simnpo_loss(unlikely, labels)) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize("name", ["ft_lora", "grace", "wise"])
def test_training_generates_from_training_prompts_only(name: str, tiny_model: Path,
                                                       tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    real = verify.pieces_reached

    def recording(generate, tokenizer, pieces):
        def spy(prompts: Sequence[str], n: int) -> list[str]:
            seen.extend(prompts)
            return generate(prompts, n)
        return real(spy, tokenizer, pieces)

    monkeypatch.setattr(verify, "pieces_reached", recording)
    budget = Budget(steps=1, verify_rounds=1, early_stop=False, max_retain=1)
    served = METHODS[name](tiny_model, PIECES, [RetainSpec("Hi", " there")], budget, 0,
                           tmp_path)
    served.close()
    allowed = {p for piece in PIECES for p in verify.training_prompts(piece)}
    assert seen and set(seen) <= allowed
    assert served.last_update.steps_per_piece <= budget.max_steps
