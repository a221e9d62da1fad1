"""Evaluation is never training: no prompt that scores generality, locality or retention is a
gate negative, retain prompt or background prompt of the engine."""

from __future__ import annotations

from benchmarks import default_model_update as dmu
from memory_store.models.builtin import FACTS
from memory_store.update.updater import hard_negative_candidates


def test_default_update_split_keeps_scored_prompts_out_of_the_background() -> None:
    edits, unlearns = dmu.pick(20, 20)
    pieces = dmu.make_pieces(edits, unlearns)
    related, unrelated, background = dmu.evaluation_split(edits, unlearns, pieces)
    negatives = set(hard_negative_candidates(pieces))
    assert not set(related + unrelated) & negatives
    assert related and unrelated and background
    assert not set(related + unrelated) & set(background)
    # no phrasing of a related or held-out fact is a negative either
    scored_entities = {f.entity for f in FACTS if f.prompts[0] in set(unrelated)}
    for f in FACTS:
        if f.prompts[0] in set(related) or f.entity in scored_entities:
            assert not set(f.prompts) & set(background), f


def test_default_update_run_reports_no_overlap_with_what_the_engine_trained_on() -> None:
    report = dmu.run(20, 20)
    # run() raises if any scored prompt is among the engine's training prompts after the
    # update (background, stored retain prompts including subject hard negatives, pieces)
    assert report["eval_training_overlap"] == 0
    assert report["n_background"] > 0 and report["n_related"] > 0
