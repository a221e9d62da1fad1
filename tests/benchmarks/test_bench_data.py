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
    (z,) = D.load_zsre(data_dir).rows
    assert (z.prompt, z.answer, z.new, z.paraphrase) == ("What does UniFirst make?",
                                                         "uniforms", "drones",
                                                         "What is UniFirst's product?")
    (c,) = D.load_counterfact(data_dir).rows
    assert (c.answer, c.new, c.loc_prompt) == ("French", "English", "M speaks")
    pku = D.load_pku(data_dir).rows
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
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason="shared benchmark data not present")


def _real_rows(rel: str) -> list[dict]:
    return list(D.read_jsonl(REAL / rel))


@needs_real
def test_loaders_skip_and_count_rows_with_blank_texts(tmp_path: Path) -> None:
    """A few real rows, plus copies of them with one text blanked: the loaders keep the real
    rows, skip the blanked ones and count them by reason."""
    zsre = [r for r in _real_rows(D.ZSRE_FILE)[:5] if r["alt"].strip()][:3]
    _write(tmp_path / D.ZSRE_FILE, [
        zsre[0], {**zsre[1], "alt": ""}, zsre[1], {**zsre[2], "loc_ans": " \t"},
        {**zsre[2], "answers": [], "pred": ""}, {**zsre[2], "rephrase": None}, zsre[2]])
    loaded = D.load_zsre(tmp_path)
    assert [r.prompt for r in loaded.rows] == [r["src"] for r in zsre]
    assert loaded.rows[0].new == zsre[0]["alt"] and loaded.rows[0].answer == zsre[0]["answers"][0]
    assert loaded.report.as_dict() == {"total_rows": 7, "skipped": {
        "empty alt": 1, "empty loc_ans": 1, "empty answers": 1, "empty rephrase": 1}}

    cf = _real_rows(D.COUNTERFACT_FILE)[:3]
    _write(tmp_path / D.COUNTERFACT_FILE, [
        {**cf[0], "target_new": "  "}, *cf, {**cf[1], "ground_truth": ""},
        {k: v for k, v in cf[2].items() if k != "locality_ground_truth"}])
    loaded = D.load_counterfact(tmp_path)
    assert [(r.prompt, r.new) for r in loaded.rows] == [(r["prompt"], r["target_new"])
                                                         for r in cf]
    assert loaded.report.n_skipped == 3 and loaded.report.skipped == {
        "empty target_new": 1, "empty ground_truth": 1, "empty locality_ground_truth": 1}

    pku = _real_rows(D.PKU_FILE)[:2]
    _write(tmp_path / D.PKU_FILE, [
        {**pku[0], "response": [pku[0]["response"][0], ""]}, *pku,
        {"prompt": "p", "response": ["only one"]}])
    loaded = D.load_pku(tmp_path)
    # the blanked pair is skipped, so the prompt's first complete pair is the one kept
    assert loaded.rows[0] == D.SafetyPair(pku[0]["prompt"], *pku[0]["response"])
    assert loaded.report.as_dict() == {"total_rows": 4, "skipped": {
        "empty unsafe response": 1, "response is not a pair": 1}}


@needs_real
def test_suites_build_around_skipped_rows_and_report_them(tmp_path: Path) -> None:
    """The real files with blanked rows added at the top: the suites still build, never use a
    blanked row, and ``sizes["skipped_rows"]`` counts them (plus ZsRE's own empty ``alt``)."""
    zsre = _real_rows(D.ZSRE_FILE)
    assert sum(not r["alt"].strip() for r in zsre) == 1  # the real file's empty alt
    _write(tmp_path / D.ZSRE_FILE, [{**zsre[0], "src": "A blanked fact?", "alt": ""}, *zsre])
    cf = _real_rows(D.COUNTERFACT_FILE)
    _write(tmp_path / D.COUNTERFACT_FILE,
           [{**cf[0], "prompt": "A blanked prompt is", "target_new": ""}, *cf])
    for name, blank, skipped in (("zsre", "A blanked fact?", {"empty alt": 2}),
                                 ("counterfact", "A blanked prompt is",
                                  {"empty target_new": 1})):
        suite = build_suite(name, "small", tmp_path)
        (rel,) = D.SUITE_FILES[name]
        total = len(zsre if name == "zsre" else cf) + 1
        assert suite.sizes["skipped_rows"] == {rel: {"total_rows": total, "skipped": skipped}}
        prompts = {p for p, _ in suite.corpus.all_pairs()}
        assert blank not in prompts
        for s in suite.settings:
            assert all(c.target.strip() for c in s.cases)
            assert all(a.strip() for _, a in s.locality)


@needs_real
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
    if name != "tofu":
        (rel,) = [f for f in D.SUITE_FILES[name] if not f.startswith("tofu/")]
        report = suite.sizes["skipped_rows"][rel]
        assert report["skipped"] == ({"empty alt": 1} if name == "zsre" else {})


@needs_real
def test_unknown_suite_or_scale() -> None:
    with pytest.raises(ValueError, match="unknown suite"):
        build_suite("nope", "small", REAL)
    with pytest.raises(ValueError, match="unknown scale"):
        build_suite("zsre", "huge", REAL)
