"""Facts the base model knows: the answer check, the filter of the fact suites, the cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.data import REPO_ROOT
from benchmarks.known import KnownFacts, contains_answer
from benchmarks.suites import build_suite

DATA = REPO_ROOT.parent / "shared" / "data"


def test_contains_answer_matches_whole_words_ignoring_case_and_punctuation() -> None:
    assert contains_answer(" French.", "French")
    assert contains_answer(" The mother tongue of Danielle Darrieux is French", " french")
    assert not contains_answer(" Frenchman", "French")
    assert not contains_answer(" anything", "   ")


@pytest.mark.parametrize("name", ["counterfact", "zsre"])
def test_unlearn_and_retain_facts_are_the_known_ones(name: str) -> None:
    # a stand-in for a base model: it "knows" facts whose answer has an even length
    asked: list[tuple[str, str]] = []

    def known(pairs: list[tuple[str, str]]) -> list[bool]:
        asked.extend(pairs)
        return [len(a.strip()) % 2 == 0 for _, a in pairs]

    suite = build_suite(name, "cpu", DATA, known)
    joint = suite.setting("joint")
    assert joint.unlearns and all(len(c.target.strip()) % 2 == 0 for c in joint.unlearns)
    assert all(len(a.strip()) % 2 == 0 for _, a in joint.retain_eval)
    assert all(len(r.target.strip()) % 2 == 0 for r in joint.retain_train)
    report = suite.sizes["known_check"]
    assert report["checked"] == len(asked) and report["known"] >= report["needed"]
    # edits are not filtered and never reuse an unlearn or retain fact
    used = {c.prompt for c in joint.unlearns} | {p for p, _ in joint.retain_eval}
    assert not {c.prompt for c in suite.sequential.stream if c.kind.value == "edit"} & used


def test_few_known_facts_shrink_the_unlearn_set_and_say_so() -> None:
    suite = build_suite("zsre", "cpu", DATA, lambda pairs: [i % 300 == 0 for i, _ in
                                                             enumerate(pairs)])
    joint = suite.setting("joint")
    assert 0 < len(joint.unlearns) < 10 and not joint.retain_train
    assert suite.sizes["known_check"]["short"] is True


def test_known_facts_of_a_real_model_are_cached(tmp_path: Path, tiny_model: Path) -> None:
    pairs = [("The capital of France is", " Paris"), ("2 + 2 =", " 4")]
    first = KnownFacts(tiny_model, tmp_path)
    mask = first.mask(pairs)
    first.close()
    assert len(mask) == 2 and first.checked == 2
    again = KnownFacts(tiny_model, tmp_path)
    assert again.mask(pairs) == mask and again.checked == 0  # from the cache, no model run
