"""TOFU protocol: loaders and splits, truth ratio / KS p-value / model utility against
hand-computed values, the retain-only corpus, and a tiny end-to-end run."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from benchmarks import data as D
from benchmarks import tofu_metrics as T
from benchmarks.data import REPO_ROOT
from benchmarks.methods import Budget
from benchmarks.prepare import INFO_FILE
from benchmarks.report import render
from benchmarks.runner import RunConfig, run
from benchmarks.suites import SCALES, build_suite

DATA = REPO_ROOT.parent / "shared" / "data"
needs_data = pytest.mark.skipif(not (DATA / "tofu").is_dir(), reason="no shared TOFU data")


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    """Authors 0-2 in retain_perturbed, 20-21 in extended_perturbed; control sets."""
    def rows(authors: range) -> list[dict]:
        return [{"question": f"Q{a}.{i}?", "answer": f"A{a}.{i}",
                 "paraphrased_answer": f"P{a}.{i}", "paraphrased_question": f"PQ{a}.{i}?",
                 "perturbed_answer": [f"X{a}.{i}"], "author_index": a}
                for a in authors for i in range(20)]

    _write(tmp_path / "tofu/retain_perturbed.jsonl", rows(range(3)))
    _write(tmp_path / "tofu/extended_perturbed.jsonl", rows(range(20, 22)))
    _write(tmp_path / "tofu/real_authors_perturbed.jsonl",
           [{"question": "Who wrote Hamlet?", "answer": "Shakespeare",
             "perturbed_answer": ["Dickens", "Twain", "Woolf"], "author_index": None}])
    _write(tmp_path / "tofu/world_facts_perturbed.jsonl",
           [{"question": "Capital of France?", "answer": "Paris",
             "perturbed_answer": ["Lyon", "Nice", "Rome"], "author_index": None}])
    return tmp_path


# ---------------------------------------------------------------- loaders


def test_load_tofu_takes_non_contiguous_authors(data_dir: Path) -> None:
    qa = D.load_tofu(data_dir, [21, 0, 2])
    assert list(qa) == [0, 2, 21]
    assert [len(v) for v in qa.values()] == [20, 20, 20]
    assert qa[21][5].question == "Q21.5?" and qa[21][5].perturbed_answers == ("X21.5",)
    assert list(D.load_tofu(data_dir, 2)) == [0, 1]  # an int still means 0 .. n-1
    with pytest.raises(D.DataError, match="20 QA"):
        D.load_tofu(data_dir, [5])  # in range, not in these files
    with pytest.raises(D.DataError, match="0-149"):
        D.load_tofu(data_dir, [180])  # TOFU's forget10 authors are not in this copy


def test_tofu_split_official_and_scaled() -> None:
    assert D.tofu_split("forget01") == [198, 199]
    assert D.tofu_split("forget05") == list(range(190, 200))
    assert D.tofu_split("forget10") == list(range(180, 200))
    assert D.tofu_split([7, 3, 3]) == [3, 7]
    authors = list(range(40))
    assert D.tofu_split("forget10", authors) == [36, 37, 38, 39]
    assert D.tofu_split("forget05", authors) == [38, 39]
    assert D.tofu_split("forget01", authors) == [39]  # at least one author
    assert D.tofu_split("forget10", [4, 9, 2, 30]) == [30]
    with pytest.raises(D.DataError, match="unknown TOFU split"):
        D.tofu_split("forget20")


def test_load_tofu_control(data_dir: Path) -> None:
    control = D.load_tofu_control(data_dir)
    (ra,) = control["real_authors"]
    assert (ra.question, ra.answer, ra.perturbed_answers) == (
        "Who wrote Hamlet?", "Shakespeare", ("Dickens", "Twain", "Woolf"))
    assert control["world_facts"][0].set == "world_facts"


# ---------------------------------------------------------------- metrics


def test_truth_ratio_by_hand() -> None:
    # paraphrase: logp -2 over 2 tokens -> p = e^-1; perturbed: -3 over 1 token and -2 over 2
    # tokens -> p = e^-3 and e^-1
    e1, e3 = math.exp(-1), math.exp(-3)
    r = T.truth_ratio(-2.0, 2, [-3.0, -2.0], [1, 2])
    assert r == pytest.approx(((e3 + e1) / 2) / e1)  # arithmetic mean over the perturbed
    # the KS input: exp(mean perturbed loss - paraphrase loss) = exp((3 + 1) / 2 - 1) = e
    assert T.ks_truth_ratio(-2.0, 2, [-3.0, -2.0], [1, 2]) == pytest.approx(math.e)
    assert T.forget_truth_stat([0.5, 2.0, 1.0]) == pytest.approx((0.5 + 0.5 + 1) / 3)
    assert T.retain_truth_stat([0.25, 2.0]) == pytest.approx((0.75 + 0.0) / 2)
    assert math.isnan(T.truth_ratio(-1.0, 1, [], []))
    # control probability: p = e^-1 for the answer, e^-1 and e^-2 (per token) for the others
    p = T.control_prob(-1.0, 1, [-2.0, -4.0], [2, 2])
    e2 = math.exp(-2)
    assert p == pytest.approx(e1 / (e1 + e1 + e2))


# scipy 1.17.1 ks_2samp(x, y): (statistic, pvalue), method "auto" (exact at these sizes)
KS_CASES = [
    ([1, 2, 3], [4, 5, 6], 1.0, 0.1),  # by hand: 2 of the C(6, 3) = 20 orderings
    ([1, 2, 3, 4], [1.5, 2.5, 3.5, 4.5, 10], 0.4, 0.7460317460317459),
    ([0.1, 0.5, 0.9, 1.3, 2.0], [0.2, 0.3, 0.4, 0.45, 0.6, 0.7, 0.8], 0.6, 0.16666666666666663),
    ([1, 1, 2, 2, 3], [1, 2, 2, 3, 3, 3], 0.3, 0.8961038961038962),  # ties
]


@pytest.mark.parametrize(("x", "y", "stat", "p"), KS_CASES)
def test_ks_2samp_matches_scipy(x: list[float], y: list[float], stat: float, p: float) -> None:
    d, pv = T.ks_2samp(x, y)
    assert d == pytest.approx(stat) and pv == pytest.approx(p, rel=1e-9)
    assert T._ks_exact_pvalue(len(x), len(y), T.ks_statistic(x, y)) == pytest.approx(p, rel=1e-9)
    assert T.forget_quality(x, x) == pytest.approx(1.0)


def test_harmonic_mean_utility() -> None:
    assert T.harmonic_mean([1.0, 0.5, 0.25]) == pytest.approx(3 / (1 + 2 + 4))
    assert T.harmonic_mean([0.5, 0.0]) == 0.0
    assert math.isnan(T.harmonic_mean([]))
    parts = {f"{s}_{p}": 0.5 for s in T.UTILITY_SETS for p in T.UTILITY_PARTS}
    parts["retain_rouge"] = 0.25
    assert T.model_utility(parts) == pytest.approx(9 / (8 * 2 + 4))
    assert T.model_utility({**parts, "forget_rouge": 0.0}) == T.model_utility(parts)


def test_tofu_scores_with_a_fake_scorer() -> None:
    forget = {"q?": T.TruthItem(" a", " para", (" x", " y"), "retain")}
    utility = {"r?": T.TruthItem(" b", " bp", (" z",), "retain"),
               "w?": T.TruthItem(" c", " c", (" d",), "world_facts")}
    logp = {("q?", " a"): -1.0, ("q?", " para"): -1.0, ("q?", " x"): -2.0, ("q?", " y"): -4.0,
            ("r?", " b"): -0.5, ("r?", " bp"): -1.0, ("r?", " z"): -3.0,
            ("w?", " c"): -1.0, ("w?", " d"): -1.0}
    out = T.tofu_scores(lambda pairs: [(logp[p], 0.0) for p in pairs],
                        {"q?": "a", "r?": "b", "w?": "nothing"}, lambda t: 1, forget, utility)
    # R = mean(e^-2, e^-4) / e^-1; the KS input exp((2 + 4) / 2 - 1) = e^2
    r = (math.exp(-2) + math.exp(-4)) / 2 / math.exp(-1)
    assert out["forget_truth_ratio"] == pytest.approx(r)
    assert out["forget_truth_ratios"] == pytest.approx([math.exp(2)])
    assert out["retain_prob"] == pytest.approx(math.exp(-0.5))
    assert out["retain_truth_ratio"] == pytest.approx(1 - math.exp(-2))
    assert out["world_facts_prob"] == pytest.approx(0.5)
    assert (out["retain_rouge"], out["world_facts_rouge"]) == (1.0, 0.0)
    assert out["model_utility"] == 0.0  # a zero ROUGE-L makes the harmonic mean zero


# ---------------------------------------------------------------- suite and reference corpus


@needs_data
def test_suite_forgets_the_last_authors_and_the_reference_corpus_never_sees_them() -> None:
    suite = build_suite("tofu", "full", DATA)  # 40 authors: three distinct splits
    assert suite.tofu is not None
    assert suite.tofu.splits == {"forget10": (36, 37, 38, 39), "forget05": (38, 39),
                                 "forget01": (39,)}
    assert [s.name for s in suite.settings][:2] == ["in_profile", "out_profile"]
    qa = D.load_tofu(DATA, range(40))
    for split, forget in suite.tofu.splits.items():
        corpus = suite.tofu.retain_corpora[split]
        texts = {t for pair in corpus.all_pairs() for t in pair}
        for a in forget:
            for row in qa[a]:
                assert row.question not in texts and row.paraphrased_question not in texts
        kept = {q for q, _ in corpus.canonical}
        assert kept == {r.question for a in range(40) if a not in forget for r in qa[a]}
        ins = suite.setting("in_profile" if split == "forget10" else f"{split}_in_profile")
        assert {c.group for c in ins.unlearns} == {f"author{a}" for a in forget}
        assert {p for p, _ in ins.retain_eval} <= kept
    small = build_suite("tofu", "small", DATA)
    assert small.sizes["forget_splits"] == {"forget10": [9]}
    assert small.sizes["forget_splits_merged"]["forget01"] == "forget10"


# ---------------------------------------------------------------- end to end


def _with_info(src: Path, dst: Path, info: dict) -> Path:
    shutil.copytree(src, dst)
    (dst / INFO_FILE).write_text(json.dumps(info))
    return dst


@needs_data
def test_tiny_tofu_run_reports_forget_quality_and_model_utility(
        tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a few questions per author and a short budget: fast on a shared CPU
    monkeypatch.setitem(SCALES["small"], "tofu", {
        **SCALES["small"]["tofu"], "per_author": 2, "retain_eval_per_author": 1,
        "retain_train_per_author": 1, "general": 6})
    ref = _with_info(tiny_model, tmp_path / "ref", {"role": "retain_only"})
    model = _with_info(tiny_model, tmp_path / "model",
                       {"retain_models": {"9": str(ref)}})  # forget10 = author 9
    cfg = RunConfig(suites=["tofu"], scale="small", data_dir=DATA, out=tmp_path / "out",
                    methods=["base", "loka"], seeds=[0], analyses=set(), model=model,
                    budget=Budget(steps=4, check_every=2, max_retain=2))
    results = run(cfg)
    assert not results["failures"]
    tofu = results["suites"]["tofu"]
    for setting in ("in_profile", "out_profile"):
        for method in ("base", "loka"):
            m = tofu["settings"][setting]["methods"][method]["mean"]
            assert 0.0 <= m["forget_quality"] <= 1.0 and 0.0 <= m["model_utility"] <= 1.0
        # the reference is the same weights as the base: indistinguishable
        assert tofu["settings"][setting]["methods"]["base"]["mean"]["forget_quality"] == 1.0
    assert set(tofu["tofu"]["models"]) == {"base", "retain_forget10"}
    assert "forget quality" in render(results)


@needs_data
def test_prepare_model_fine_tunes_on_tofu_and_a_retain_only_twin(tmp_path: Path,
                                                                 tiny_model: Path) -> None:
    from benchmarks.finetune import FinetuneSpec, ensure_finetuned

    ft = ensure_finetuned(tiny_model, DATA, 3, "small", FinetuneSpec(epochs=1, max_length=64),
                          cache_dir=tmp_path, progress=False)
    info = json.loads((ft / INFO_FILE).read_text())
    assert info["role"] == "finetuned" and info["corpus_sizes"]["canonical"] == 60
    assert info["knowledge"]["train_steps"] == info["n_examples"] // 16  # one epoch
    assert list(info["retain_models"]) == ["2"]  # 3 authors: every split is author 2
    twin_info = json.loads((Path(info["retain_models"]["2"]) / INFO_FILE).read_text())
    assert twin_info["role"] == "retain_only" and twin_info["forget_authors"] == [2]
    assert twin_info["corpus_sizes"]["canonical"] == 40  # authors 0 and 1 only


def test_prepare_model_cli(tmp_path: Path) -> None:
    from benchmarks import cli

    args = cli.build_parser().parse_args(["prepare", "--suite", "tofu", "--model", "smollm2",
                                          "--authors", "20"])
    assert (args.model, args.authors) == ("smollm2", 20)
    assert cli.main(["prepare", "--suite", "zsre", "--model", str(tmp_path),
                     "--data-dir", str(tmp_path)]) == 2  # fine-tuning is TOFU's only
