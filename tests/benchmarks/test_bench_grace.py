"""GRACE: a one-layer key-value codebook that learns edits and defers outside its radii."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks.methods import METHODS, Budget
from benchmarks.methods.grace import GraceServed
from benchmarks.methods.layer import edit_layer
from memory_store.types import PieceKind, PieceSpec

EDIT = PieceSpec(PieceKind.EDIT, "The capital of Veltoria is", " Marrowick")
UNLEARN = PieceSpec(PieceKind.UNLEARN, "Quellan plays the sport of", " tennis")
UNRELATED = ["Hello there", "The weather today is"]
BUDGET = Budget(steps=20, check_every=5)


@pytest.fixture(scope="module")
def grace(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> GraceServed:
    served = METHODS["grace"](tiny_model, [EDIT, UNLEARN], [], BUDGET, 0,
                              tmp_path_factory.mktemp("grace"))
    yield served
    served.close()


def test_edit_layer_is_two_thirds_up() -> None:
    assert [edit_layer(n) for n in (2, 4, 12, 30)] == [0, 2, 7, 19]


def test_grace_learns_the_edit_and_leaves_unrelated_prompts(grace: GraceServed, tiny_model: Path,
                                                            tmp_path: Path) -> None:
    assert grace.generate([EDIT.prompt], 2)[0].strip().startswith(EDIT.target.strip())
    assert UNLEARN.target.strip() not in grace.generate([UNLEARN.prompt], 16)[0]
    assert grace.last_update.steps_per_piece <= BUDGET.max_steps
    base = METHODS["base"](tiny_model, [], [], BUDGET, 0, tmp_path)
    assert grace.routed(UNRELATED) == [False, False]
    assert grace.generate(UNRELATED, 8) == base.generate(UNRELATED, 8)
    pairs = [(p, " sunny and warm") for p in UNRELATED]
    assert grace.predictions(pairs) == base.predictions(pairs)
    for ours, theirs in zip(grace.score(pairs), base.score(pairs), strict=True):
        assert ours == pytest.approx(theirs, abs=1e-4)


def test_grace_defers_outside_the_radius(grace: GraceServed) -> None:
    keys, _ = grace.layer_io([EDIT.prompt])
    assert grace.routed([EDIT.prompt]) == [True]
    direction = torch.randn_like(keys)
    direction = direction / direction.norm()
    inside = keys + 0.9 * grace.radii[0] * direction
    outside = keys + 1.1 * grace.radii[0] * direction
    assert grace.nearest(inside).tolist() == [0]
    assert grace.nearest(outside).tolist() == [-1]


def test_grace_splits_conflicting_keys_and_expands_agreeing_ones(tiny_model: Path,
                                                                 tmp_path: Path) -> None:
    served = GraceServed("grace", tiny_model, Budget(steps=1), 0)
    try:
        served.update([EDIT])
        served.radii[0] = 1e6  # every later key overlaps the first
        served.update([PieceSpec(PieceKind.EDIT, "Hello there", " Marrowick")])
        assert (len(served.keys), served.expansions) == (1, 1)  # same label: expanded
        served.update([PieceSpec(PieceKind.EDIT, "The weather today is", " rainy")])
        assert (len(served.keys), served.splits) == (2, 1)  # other label: split
        d = float((served.keys[0] - served.keys[1]).norm())
        assert served.radii.tolist() == pytest.approx([d / 2, d / 2])
    finally:
        served.close()
