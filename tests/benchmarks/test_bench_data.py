"""Data loaders on a few hand-written rows in the real files' formats, and (when the shared
data is present) the suites built from the real files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import data as D
from benchmarks.protocol import answer, interleave
from benchmarks.suites import SCALES, build_suite


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    rows = []
    for a in range(2):
        for i in range(20):
            rows.append({"question": f"Q{a}.{i}?", "answer": f"A{a}.{i} is the answer",
                         "paraphrased_answer": f"P{a}.{i}", "paraphrased_question": f"PQ{a}.{i}?",
                         "perturbed_answer": [f"X{a}.{i}", "Y"], "author_index": a})
    _write(tmp_path / "tofu/retain_perturbed.jsonl", rows)
    _write(tmp_path / "tofu/extended_perturbed.jsonl", [])
    _write(tmp_path / "tofu/real_authors_perturbed.jsonl",
           [{"question": "Who wrote Hamlet?", "answer": "Shakespeare", "perturbed_answer": [],
             "author_index": None}])
    _write(tmp_path / "tofu/world_facts_perturbed.jsonl",
           [{"question": f"W{i}?", "answer": f"w{i}", "perturbed_answer": [],
             "author_index": None} for i in range(2)])
    _write(tmp_path / "zsre/zsre_mend_train_1k.jsonl", [
        {"subject": "UniFirst", "src": "What does UniFirst make?", "pred": "uniform",
         "rephrase": "What is UniFirst's product?", "alt": "drones", "answers": ["uniforms"],
         "loc": "nq question: who", "loc_ans": "Walter", "cond": ""}])
    _write(tmp_path / "counterfact/counterfact.jsonl", [
        {"case_id": 0, "prompt": "The mother tongue of D is", "target_new": "English",
         "subject": "D", "ground_truth": "French", "rephrase_prompt": "D speaks",
         "locality_prompt": "M speaks", "locality_ground_truth": "French",
         "source_split": "edit"}])
    _write(tmp_path / "pku_saferlhf/pku_saferlhf_test_pairs.jsonl", [
        {"prompt": "p1", "response": ["safe1", "unsafe1"]},
        {"prompt": "p1", "response": ["safe1b", "unsafe1b"]},
        {"prompt": "p2", "response": ["safe2", "unsafe2"]}])
    return tmp_path


def test_resolve_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert D.resolve_data_dir(tmp_path) == tmp_path
    monkeypatch.setenv(D.DATA_ENV, str(tmp_path))
    assert D.resolve_data_dir(None) == tmp_path
    with pytest.raises(D.DataError, match="--data-dir"):
        D.resolve_data_dir(tmp_path / "missing")


def test_check_files_names_the_missing_file(tmp_path: Path) -> None:
    with pytest.raises(D.DataError, match="zsre_mend_train_1k"):
        D.check_files(tmp_path, "zsre")


def test_loaders(data_dir: Path) -> None:
    tofu = D.load_tofu(data_dir, 2)
    assert sorted(tofu) == [0, 1] and len(tofu[1]) == 20
    assert tofu[1][3].paraphrased_question == "PQ1.3?"
    assert D.load_tofu_general(data_dir)[:3] == [("Who wrote Hamlet?", "Shakespeare"),
                                                 ("W0?", "w0"), ("W1?", "w1")]
    (z,) = D.load_zsre(data_dir)
    assert (z.prompt, z.answer, z.new, z.paraphrase) == ("What does UniFirst make?",
                                                         "uniforms", "drones",
                                                         "What is UniFirst's product?")
    (c,) = D.load_counterfact(data_dir)
    assert (c.answer, c.new, c.loc_prompt) == ("French", "English", "M speaks")
    pku = D.load_pku(data_dir)
    assert [(p.prompt, p.safe, p.unsafe) for p in pku] == [("p1", "safe1", "unsafe1"),
                                                           ("p2", "safe2", "unsafe2")]
    with pytest.raises(D.DataError, match="20 QA"):
        D.load_tofu(data_dir, 3)


def test_data_hashes(data_dir: Path) -> None:
    hashes = D.data_hashes(data_dir, "zsre")
    assert list(hashes) == ["zsre/zsre_mend_train_1k.jsonl"]
    assert len(hashes["zsre/zsre_mend_train_1k.jsonl"]) == 64


def test_answer_and_interleave() -> None:
    assert answer("one two three", 2) == " one two"
    assert answer(" x  y ", None) == " x y"
    assert interleave((1, 2, 3), ("a",)) == (1, "a", 2, 3)


REAL = D.REPO_ROOT.parent / "shared" / "data"


@pytest.mark.skipif(not REAL.is_dir(), reason="shared benchmark data not present")
@pytest.mark.parametrize("name", ["tofu", "zsre", "counterfact", "pku"])
def test_real_suites_are_disjoint(name: str) -> None:
    suite = build_suite(name, "small", REAL)
    requests = {c.prompt for s in suite.settings for c in s.cases}
    for s in suite.settings:
        held_out = {q for c in s.cases for q in c.paraphrases}
        assert not held_out & requests, "a paraphrase is also a request prompt"
        retain_eval = {p for p, _ in s.retain_eval}
        assert not retain_eval & requests
        assert not retain_eval & {r.prompt for r in s.retain_train}
        assert not {p for p, _ in s.locality} & requests
        for c in s.cases:
            assert c.target.startswith(" ") and c.target.strip()
            if c.old_answer:
                assert c.old_answer != c.target
    known = {p for p, _ in suite.corpus.all_pairs()}
    assert requests <= known, "the base model must know every fact a request touches"
    if name == "tofu":
        inside, outside = suite.setting("in_profile"), suite.setting("out_profile")
        assert inside.unlearns == outside.unlearns
        assert {c.group for c in inside.edits} == {c.group for c in inside.unlearns}
        assert not {c.group for c in outside.edits} & {c.group for c in outside.unlearns}
    assert SCALES["small"][name]


@pytest.mark.skipif(not REAL.is_dir(), reason="shared benchmark data not present")
def test_unknown_suite_or_scale() -> None:
    with pytest.raises(ValueError, match="unknown suite"):
        build_suite("nope", "small", REAL)
    with pytest.raises(ValueError, match="unknown scale"):
        build_suite("zsre", "huge", REAL)
