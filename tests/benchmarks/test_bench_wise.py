"""WISE-style side memory: learns edits, routes by activation score, leaves other prompts."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.methods import METHODS, Budget
from benchmarks.methods.wise import THRESHOLD_FRACTION, WiseServed
from memory_store.types import PieceKind, PieceSpec, RetainSpec

EDIT = PieceSpec(PieceKind.EDIT, "The capital of Veltoria is", " Marrowick")
UNLEARN = PieceSpec(PieceKind.UNLEARN, "Quellan plays the sport of", " tennis")
RETAIN = [RetainSpec("The weather today is", " sunny"),
          RetainSpec("My favourite colour is", " blue")]
BUDGET = Budget(steps=20, check_every=5)


@pytest.fixture(scope="module")
def wise(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> WiseServed:
    served = METHODS["wise"](tiny_model, [EDIT, UNLEARN], RETAIN, BUDGET, 0,
                             tmp_path_factory.mktemp("wise"))
    yield served
    served.close()


def test_wise_learns_the_edit_and_leaves_unrelated_prompts(wise: WiseServed, tiny_model: Path,
                                                           tmp_path: Path) -> None:
    assert wise.generate([EDIT.prompt], 2)[0].strip().startswith(EDIT.target.strip())
    assert UNLEARN.target.strip() not in wise.generate([UNLEARN.prompt], 16)[0]
    assert wise.last_update.steps_per_piece <= BUDGET.max_steps
    unrelated = ["Hello there", "The weather today is"]
    assert wise.routed(unrelated) == [False, False]
    base = METHODS["base"](tiny_model, [], [], BUDGET, 0, tmp_path)
    assert wise.generate(unrelated, 8) == base.generate(unrelated, 8)
    pairs = [(p, " sunny and warm") for p in unrelated]
    assert wise.predictions(pairs) == base.predictions(pairs)


def test_wise_threshold_comes_from_the_trained_prompts(wise: WiseServed) -> None:
    x, mask, _ = wise.layer_inputs([EDIT.prompt, UNLEARN.prompt])
    trained = wise.scores(x, mask)
    assert wise.threshold == pytest.approx(THRESHOLD_FRACTION * float(trained.min()), rel=1e-5)
    assert wise.routed([EDIT.prompt, UNLEARN.prompt]) == [True, True]
    x, mask, _ = wise.layer_inputs([r.prompt for r in RETAIN])
    assert bool((wise.scores(x, mask) < wise.threshold).all())  # the routing margin held
