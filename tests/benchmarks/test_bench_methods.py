"""The method registry: every method fits, serves, updates and reports on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from benchmarks.methods import ABLATIONS, HEADLINE, METHODS, Budget, get_method
from benchmarks.methods.adapter import AdapterServed
from benchmarks.methods.codebook import VARIANTS, budget_config
from memory_store.types import PieceKind, PieceSpec, RetainSpec

PIECES = [PieceSpec(PieceKind.EDIT, "The capital of Veltoria is", " Marrowick"),
          PieceSpec(PieceKind.UNLEARN, "Quellan plays the sport of", " tennis")]
RETAIN = [RetainSpec("The weather today is", " sunny")]
BUDGET = Budget(steps=2, check_every=1, max_retain=2)


def test_registry_lists_every_method_once() -> None:
    assert set(HEADLINE) <= set(METHODS) and set(ABLATIONS) <= set(METHODS)
    assert {m.family for m in METHODS.values()} == {"loka", "ablation", "baseline",
                                                    "reference"}
    assert all(name == m.name for name, m in METHODS.items())
    with pytest.raises(KeyError, match="known"):
        get_method("rome")


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_fits_serves_and_updates(name: str, tiny_model: Path,
                                              tmp_path: Path) -> None:
    served = METHODS[name](tiny_model, PIECES, RETAIN, BUDGET, 0, tmp_path)
    try:
        texts = served.generate(["The capital of Veltoria is", "Hello"], 3)
        assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
        scores = served.score([(p.prompt, p.target) for p in PIECES])
        assert len(scores) == 2
        assert all(lp <= 0 and 0 <= acc <= 1 for lp, acc in scores)
        # one argmax per answer token; its agreement with the answer is the score's accuracy
        preds = served.predictions([(p.prompt, p.target) for p in PIECES])
        for p, pred, (_, acc) in zip(PIECES, preds, scores, strict=True):
            target = _ids(tiny_model, p.target)
            assert len(pred) == len(target)
            assert sum(a == b for a, b in zip(pred, target, strict=True)) / len(target) == \
                pytest.approx(acc)
        footprint = served.footprint_bytes()
        assert footprint == 0 if name == "base" else footprint > 0
        assert served.last_update.steps_per_piece <= BUDGET.max_steps
        stats = served.update([PieceSpec(PieceKind.EDIT, "Hello there", " friend")], RETAIN)
        assert stats.seconds >= 0 and stats.steps_per_piece <= BUDGET.max_steps
        json.dumps(served.info())
        assert served.footprint_bytes() >= footprint
    finally:
        served.close()


def test_a_fresh_adapter_is_the_base_model(tiny_model: Path, tmp_path: Path) -> None:
    base = METHODS["base"](tiny_model, [], [], BUDGET, 0, tmp_path)
    fresh = AdapterServed("fresh", tiny_model, BUDGET, 0, None)
    pairs = [(p.prompt, p.target) for p in PIECES]
    assert base.score(pairs) == fresh.score(pairs)
    assert base.generate(["Hello"], 4) == fresh.generate(["Hello"], 4)
    assert base.predictions(pairs) == fresh.predictions(pairs)


def test_predictions_of_a_greedy_continuation_are_its_tokens(tiny_model: Path,
                                                             tmp_path: Path) -> None:
    base = METHODS["base"](tiny_model, [], [], BUDGET, 0, tmp_path)
    prompts = ["The capital of Veltoria is", "Hello"]
    texts = base.generate(prompts, 5)
    pairs = list(zip(prompts, texts, strict=True))
    assert base.predictions(pairs) == [_ids(tiny_model, t) for t in texts]
    assert [acc for _, acc in base.score(pairs)] == [1.0, 1.0]


def _ids(model_dir: Path, text: str) -> list[int]:
    return AutoTokenizer.from_pretrained(model_dir)(text, add_special_tokens=False)["input_ids"]


def test_budget_reaches_every_codebook_variant() -> None:
    config = budget_config(Budget(rank=4, steps=7, batch_pieces=3), seed=5)
    assert (config.lora.rank, config.trainer.steps, config.mapping.capacity) == (4, 7, 3)
    assert (config.trainer.verify_rounds, config.trainer.max_steps) == (2, 21)
    assert config.trainer.seed == config.router.seed == 5
    assert VARIANTS["loka_per_piece"](config).mapping.capacity == 1
    assert VARIANTS["loka_dense"](config).mapping.capacity == 10_000
    assert not VARIANTS["loka_no_router"](config).router.enabled
    assert VARIANTS["loka_never_split"](config).conflict.mode == "mgda"
    assert VARIANTS["loka_always_split"](config).conflict.mode == "split"
    lora_cb = VARIANTS["lora_codebook"](config)
    assert (lora_cb.mapping.capacity, lora_cb.router.enabled,
            lora_cb.trainer.max_retain) == (1, False, 0)


@pytest.mark.parametrize("field", ["rank", "steps", "batch_pieces"])
def test_budget_validation_names_the_field(field: str) -> None:
    with pytest.raises(ValueError, match=f"budget.{field}"):
        Budget(**{field: 0})
    with pytest.raises(ValueError, match="budget.verify_rounds"):
        Budget(verify_rounds=-1)
