"""ROUGE-L (rouge-score, as TOFU), exact match, token agreement, length-normalised
probability and the seed statistics."""

from __future__ import annotations

import math

import pytest

from benchmarks.metrics import (
    exact_match,
    mean,
    mean_token_prob,
    rouge_l_f1,
    rouge_l_recall,
    std,
    token_agreement,
)


def test_rouge_l_recall_counts_the_reference_in_order() -> None:
    ref = "Jaime Vasquez was born in Santiago"
    assert rouge_l_recall(ref, ref) == 1.0
    assert rouge_l_recall(ref, "He was born in 1958 in Santiago, Chile") == pytest.approx(4 / 6)
    assert rouge_l_recall(ref, "Santiago born in was") == pytest.approx(2 / 6)
    assert rouge_l_recall(ref, "") == 0.0
    assert rouge_l_recall("", "anything") == 0.0


def test_rouge_l_recall_is_reference_first_and_stemmed() -> None:
    # recall is over the first argument (the reference), as TOFU's scorer.score(gt, gen)
    assert rouge_l_recall("a b c d", "a b") == pytest.approx(0.5)
    assert rouge_l_recall("a b", "a b c d") == 1.0
    # Porter stemming: "running dogs" and "run dog" are the same tokens
    assert rouge_l_recall("running dogs", "run dog") == 1.0
    # case and punctuation are folded
    assert rouge_l_recall("Paris, France!", "paris france") == 1.0


def test_rouge_l_f1() -> None:
    assert rouge_l_f1("a b c d", "a b") == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    assert rouge_l_f1("a b", "c d") == 0.0


def test_exact_match_is_a_normalised_prefix() -> None:
    assert exact_match(" Paris", "paris is the capital")
    assert exact_match(" New  York", " new york")
    assert not exact_match(" Paris", " The capital is Paris")
    assert not exact_match("  ", "anything")


def test_token_agreement() -> None:
    assert token_agreement([1, 2, 3], [1, 2, 3]) == 1.0
    assert token_agreement([1, 2, 3], [1, 9, 3, 4]) == pytest.approx(2 / 4)
    assert token_agreement([], []) == 1.0
    assert token_agreement([1], []) == 0.0


def test_mean_token_prob_is_the_per_token_geometric_mean() -> None:
    assert mean_token_prob(math.log(0.25) * 2, 2) == pytest.approx(0.25)
    assert mean_token_prob(0.0, 3) == 1.0
    assert math.isnan(mean_token_prob(-1.0, 0))


def test_mean_and_std_skip_missing_values() -> None:
    assert mean([1.0, float("nan"), 3.0]) == 2.0
    assert math.isnan(mean([]))
    assert std([2.0]) == 0.0
    assert std([1.0, 3.0]) == pytest.approx(math.sqrt(2))
    assert math.isnan(std([float("nan")]))
