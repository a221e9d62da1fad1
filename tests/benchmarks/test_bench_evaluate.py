"""The evaluation protocol on a scripted model, and the report of a synthetic run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks.evaluate import base_knowledge, collect, compute_metrics
from benchmarks.methods import METHODS, Budget
from benchmarks.plots import write_plots
from benchmarks.protocol import Case, Setting
from benchmarks.report import render
from benchmarks.runner import write_json
from benchmarks.sequential import flatness
from memory_store.types import PieceKind, PieceSpec, RetainSpec

SETTING = Setting(
    "toy", "joint",
    edits=(Case(PieceKind.EDIT, "capital of A?", " Bexley", ("A's capital?",), " Arlo"),),
    unlearns=(Case(PieceKind.UNLEARN, "sport of Q?", " tennis on grass", ("Q plays?",),
                   alt_answers=(" lawn tennis",)),),
    retain_train=(RetainSpec("colour of R?", " red"),),
    retain_eval=(("river of S?", " Sune river"), ("food of T?", " rice")),
    locality=(("Who wrote Hamlet?", " Shakespeare"),),
)


class Scripted:
    """Answers from a table; scores and teacher-forced predictions as given."""

    name = "scripted"

    def __init__(self, texts: dict[str, str], scores: dict[tuple[str, str], tuple[float, float]],
                 routed: dict[str, bool] | None = None,
                 preds: dict[tuple[str, str], list[int]] | None = None) -> None:
        self.texts, self.scores, self.preds = texts, scores, preds or {}
        if routed is not None:
            self.routed = lambda prompts: [routed[p] for p in prompts]

    def generate(self, prompts, max_new_tokens):
        return [self.texts.get(p, "") for p in prompts]

    def score(self, pairs):
        return [self.scores.get(p, (-1.0, 0.0)) for p in pairs]

    def predictions(self, pairs):
        return [self.preds[p] for p in pairs]


class WordTokenizer:
    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [hash(w) % 1000 for w in text.split()]}


BASE_TEXTS = {"capital of A?": " Arlo", "A's capital?": " Arlo", "sport of Q?": " tennis on grass",
              "Q plays?": " tennis on grass", "river of S?": " Sune river", "food of T?": " rice",
              "Who wrote Hamlet?": " Shakespeare"}
BASE_SCORES = {("sport of Q?", " tennis on grass"): (-1.0, 1.0),
               ("Q plays?", " tennis on grass"): (-2.0, 1.0),
               ("sport of Q?", " lawn tennis"): (-3.0, 0.5),
               ("capital of A?", " Arlo"): (-0.5, 1.0),
               ("capital of A?", " Bexley"): (-9.0, 0.0), ("A's capital?", " Bexley"): (-9.0, 0.0)}


HAMLET = ("Who wrote Hamlet?", " Shakespeare")


def test_metrics_of_a_scripted_update() -> None:
    base = collect(Scripted(BASE_TEXTS, BASE_SCORES, preds={HAMLET: [1, 2, 3, 4]}), SETTING, 8)
    assert base.preds == {HAMLET: [1, 2, 3, 4]}  # predictions are taken on the locality pairs
    texts = {**BASE_TEXTS, "capital of A?": " Bexley, of course", "A's capital?": " Arlo",
             "sport of Q?": " I don't know", "Q plays?": " tennis", "food of T?": " bread",
             "Who wrote Hamlet?": " Shakespeare wrote it"}
    scores = {("capital of A?", " Bexley"): (-0.1, 1.0), ("A's capital?", " Bexley"): (-4, 0.5),
              ("capital of A?", " Arlo"): (-6.5, 0.0), ("sport of Q?", " tennis on grass"):
              (-11.0, 0.0), ("Q plays?", " tennis on grass"): (-4.0, 0.5),
              ("sport of Q?", " lawn tennis"): (-8.0, 0.0)}
    routed = {p: p in ("capital of A?", "sport of Q?") for p in BASE_TEXTS}
    out = collect(Scripted(texts, scores, routed, {HAMLET: [1, 2, 9, 4]}), SETTING, 8)
    m = compute_metrics(SETTING, out, base, WordTokenizer())
    assert (m["edit_rel_acc"], m["edit_gen_acc"]) == (1.0, 0.5)
    assert (m["edit_rel_em"], m["edit_gen_em"]) == (1.0, 0.0)
    assert m["edit_old_logp_drop"] == pytest.approx(6.0)
    assert m["unlearn_eff"] == 1.0
    assert m["unlearn_gen"] == pytest.approx(1 - 1 / 3)
    assert m["unlearn_logp_drop"] == pytest.approx(10.0)
    # " tennis on grass" is 3 tokens: per-token probability exp(-1/3) before, exp(-11/3) after
    assert m["unlearn_prob_drop"] == pytest.approx(math.exp(-1 / 3) - math.exp(-11 / 3))
    assert m["unlearn_gen_logp_drop"] == pytest.approx(2.0)
    assert m["unlearn_alt_logp_drop"] == pytest.approx(5.0)
    assert m["retain_rouge"] == pytest.approx(0.5) and m["retain_ratio"] == pytest.approx(0.5)
    assert m["locality"] == pytest.approx(1 / 3)
    assert m["locality_tf"] == pytest.approx(3 / 4)  # EasyEdit: 3 of 4 argmax tokens kept
    assert m["routed_requests"] == pytest.approx(0.5) and m["routed_locality"] == 0.0
    k = base_knowledge(SETTING, base)
    assert k["unlearn_answer_rouge"] == 1.0 and k["edit_target_acc"] == 0.0


def test_edit_generality_averages_each_case_then_the_cases() -> None:
    """EasyEdit's reliability / generality: token accuracy per case, then the mean over cases
    (a case with two paraphrases counts once)."""
    setting = Setting(
        "toy", "joint",
        edits=(Case(PieceKind.EDIT, "p1", " x", ("q1a", "q1b")),
               Case(PieceKind.EDIT, "p2", " y", ("q2",))),
        unlearns=(), retain_train=(), retain_eval=(), locality=(HAMLET,))
    scores = {("p1", " x"): (-1.0, 1.0), ("p2", " y"): (-1.0, 0.5), ("q1a", " x"): (-1.0, 1.0),
              ("q1b", " x"): (-1.0, 0.0), ("q2", " y"): (-1.0, 1.0)}
    preds = {HAMLET: [7]}
    base = collect(Scripted({}, {}, preds=preds), setting, 4)
    out = collect(Scripted({}, scores, preds=preds), setting, 4)
    m = compute_metrics(setting, out, base, WordTokenizer())
    assert m["edit_rel_acc"] == pytest.approx(0.75)
    assert m["edit_gen_acc"] == pytest.approx((0.5 + 1.0) / 2)
    assert m["locality_tf"] == 1.0 and math.isnan(m["unlearn_prob_drop"])


TINY = Setting(
    "toy", "joint",
    edits=(Case(PieceKind.EDIT, "The capital of Veltoria is", " Marrowick",
                ("Veltoria's capital is",), " Arlo"),),
    unlearns=(Case(PieceKind.UNLEARN, "Quellan plays the sport of", " tennis",
                   ("Quellan's sport is",)),),
    retain_train=(RetainSpec("The weather today is", " sunny"),),
    retain_eval=(("The river of Sune is", " the Sune"),),
    locality=(("Who wrote Hamlet?", " Shakespeare"), ("The sky is", " blue today")),
)


def test_metrics_of_a_real_update_on_the_tiny_model(tiny_model: Path, tmp_path: Path) -> None:
    """The base model against itself changes nothing; gradient ascent on the forget answer
    lowers its probability and moves the teacher-forced argmax on the locality pairs."""
    served = METHODS["base"](tiny_model, [], [], Budget(), 0, tmp_path / "base")
    base = collect(served, TINY, 6)
    assert [len(base.preds[p]) for p in TINY.locality] == [
        len(served.tokenizer(a, add_special_tokens=False)["input_ids"]) for _, a in TINY.locality]
    same = compute_metrics(TINY, base, base, served.tokenizer)
    assert same["locality_tf"] == same["locality"] == 1.0
    assert same["unlearn_prob_drop"] == same["unlearn_logp_drop"] == 0.0
    pieces = [PieceSpec(c.kind, c.prompt, c.target, c.paraphrases) for c in TINY.cases]
    ga = METHODS["ga"](tiny_model, pieces, list(TINY.retain_train), Budget(steps=10),
                       0, tmp_path / "ga")
    m = compute_metrics(TINY, collect(ga, TINY, 6), base, served.tokenizer)
    assert m["unlearn_logp_drop"] > 0 and 0 < m["unlearn_prob_drop"] <= 1
    assert m["locality_tf"] < 1.0


def _results() -> dict:
    record = {"seed": 0, "metrics": {"edit_rel_acc": 0.5, "unlearn_eff": float("nan"),
                                     "retain_ratio": 1.0, "locality": 1.0},
              "fit_seconds": 1.0, "eval_seconds": 0.1, "optimiser_steps": 3,
              "footprint_bytes": 2048, "info": {"memories": 2, "decisions": [
                  {"decision": "split"}]}}
    agg = {"runs": [record], "mean": record["metrics"], "std": {}, "fit_seconds": 1.0,
           "footprint_bytes": 2048}
    setting = {"description": "d", "base_knowledge": {
        "unlearn_answer_rouge": 1.0, "unlearn_paraphrase_rouge": 1.0, "retain_rouge": 1.0,
        "locality_answer_rouge": 1.0}, "methods": {"loka": agg}, "ablations": {"loka_dense": agg}}
    point = {"T": 10, "metrics": record["metrics"], "update_seconds": 1.0,
             "footprint_bytes": 10}
    return {
        "meta": {"command": "loka bench run", "scale": "small", "seeds": [0], "seconds": 60,
                 "platform": "x", "torch": "2", "budget": {"rank": 8, "alpha": 16, "steps": 60,
                                                           "batch_pieces": 8,
                                                           "learning_rate": 0.005,
                                                           "max_retain": 8, "check_every": 10}},
        "suites": {"tofu": {
            "model": {"n_params": 10, "knowledge": {"acc_canonical": 1.0}},
            "prepare_seconds": 3, "data_sha256": {"tofu/x.jsonl": "ab"},
            "settings": {"in_profile": setting},
            "sequential": {"batch": 10, "curves": [{"method": "loka", "points": [point]}]},
            "density": {"setting": "in_profile", "points": [{"capacity": 1, **record}]},
            "conflict": {"in_profile": {"cosines": [-0.5, 0.2], "n": 2, "mean": -0.15,
                                        "share_nonpositive": 0.5},
                         "out_profile": {"cosines": [0.3], "n": 1, "mean": 0.3,
                                         "share_nonpositive": 0.0},
                         "loka_decisions": {"in_profile": [{"decision": "split"}] * 2}}}},
    }


def test_report_json_and_plots(tmp_path: Path) -> None:
    results = _results()
    text = render(results)
    assert "| `loka` | 0.50 |" in text and "## Ablations" in text and "1 split / 0 MGDA" in text
    write_json(results, tmp_path / "results.json")
    loaded = json.loads((tmp_path / "results.json").read_text())  # strict JSON: NaN -> null
    assert loaded["suites"]["tofu"]["settings"]["in_profile"]["methods"]["loka"]["mean"][
        "unlearn_eff"] is None
    assert not math.isnan(loaded["meta"]["seconds"])
    written = write_plots(results, tmp_path)
    assert {p.name for p in written} == {"sequential_tofu.png", "conflict_tofu.png",
                                         "density_tofu.png"}


def test_sequential_update_cost_reported(tmp_path: Path) -> None:
    """Per-update seconds go into the results, the report (first against last quarter) and a
    plot; a cost growing with T shows as a ratio above 1."""
    growing = [{"before": 10 * i, "size": 10, "seconds": 1.0 + i, "optimiser_steps": 5}
               for i in range(9)]
    flat = flatness(growing)
    assert flat["first_quarter_s_per_piece"] == 0.25 and flat["last_quarter_s_per_piece"] == 0.85
    assert flat["ratio"] == 3.4
    assert flatness(growing[:3])["ratio"] is None  # too few updates to say
    results = _results()
    curve = results["suites"]["tofu"]["sequential"]["curves"][0]
    curve.update(batches=growing, flatness=flat)
    assert "| `loka` | 0.25 | 0.85 | 3.40 |" in render(results)
    written = {p.name for p in write_plots(results, tmp_path)}
    assert "sequential_tofu_update_seconds.png" in written
