"""The benchmark numbers in README.md and benchmarks/README.md are the committed results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.cli import DOCS
from benchmarks.summary import BLOCK, hmean, summary, sync

ROOT = Path(__file__).resolve().parents[2]


def test_docs_agree_with_committed_results() -> None:
    """Every results block of the docs is exactly what its results.json generates
    (``python -m benchmarks tables`` rewrites them), and the README has at least one."""
    files = [ROOT / f for f in DOCS]
    assert BLOCK.search((ROOT / "README.md").read_text()), "README has no results block"
    assert sync(files, ROOT, check=True) == []


def _results(loka_edit: float) -> dict:
    def agg(edit: float) -> dict:
        return {"mean": {"edit_rel_acc": edit, "edit_gen_acc": 0.5, "unlearn_eff": 1.0,
                         "unlearn_gen": 0.9, "retain_ratio": 1.2, "locality": 0.8,
                         "locality_tf": 0.9}, "std": {}, "fit_seconds": 12.0}
    return {"meta": {"command": "python -m benchmarks run", "scale": "cpu", "seeds": [0],
                     "seconds": 120},
            "suites": {"zsre": {"settings": {"edit_unlearn": {"methods": {
                "loka": agg(loka_edit), "npo_kl": agg(0.5)}}}}}}


def test_hmean() -> None:
    assert hmean({"edit_rel_acc": 1.0, "unlearn_eff": 0.5, "retain_ratio": 1.5,
                  "locality": float("nan")}) == pytest.approx(3 / (1 + 2 + 1))
    assert hmean({"edit_rel_acc": 0.0, "unlearn_eff": 1.0}) == 0.0
    assert hmean({}) is None


def test_sync_rewrites_and_detects_drift(tmp_path: Path) -> None:
    res = tmp_path / "r" / "results.json"
    res.parent.mkdir()
    res.write_text(json.dumps(_results(0.9)))
    doc = tmp_path / "README.md"
    doc.write_text("intro\n<!-- results: r/results.json -->\nold numbers\n<!-- /results -->\n")
    assert sync([doc], tmp_path, check=True) == ["README.md: r/results.json"]
    assert "old numbers" in doc.read_text()  # check changes nothing
    assert sync([doc], tmp_path) == ["README.md: r/results.json"]
    text = doc.read_text()
    assert "| zsre / edit_unlearn | `loka` | 0.90 |" in text and "2.0 min" in text
    assert "**0.92**" in text  # loka's h-mean (0.9, 1, 1, 0.8) is the setting's best
    assert sync([doc], tmp_path, check=True) == []
    res.write_text(json.dumps(_results(0.7)))  # the results change: the doc is now stale
    assert sync([doc], tmp_path, check=True) == ["README.md: r/results.json"]


def test_block_naming_a_missing_file_fails(tmp_path: Path) -> None:
    doc = tmp_path / "README.md"
    doc.write_text("<!-- results: nope/results.json -->\n<!-- /results -->\n")
    with pytest.raises(FileNotFoundError, match="nope/results.json"):
        sync([doc], tmp_path, check=True)


def test_summary_reports_failed_parts() -> None:
    res = _results(0.9)
    res["failures"] = {"pku/main": "ValueError"}
    assert "Failed parts: pku/main." in summary(res)


def test_blocks_of_the_conflict_analysis_and_the_chat_probe(tmp_path: Path) -> None:
    """A block naming a conflict analysis or a chat probe gets that file's own table."""
    conflict = {"warmup_steps": 5, "stats": {}, "meta": {"command": "c", "seconds": 60},
                "per_seed": [{"seed": 0, "mean_in_profile": -0.7, "mean_out_profile": -0.6,
                              "share_nonpositive_in_profile": 1.0,
                              "share_nonpositive_out_profile": 0.9, "mean_difference": -0.1,
                              "ks_p": 0.01, "mann_whitney_p": 0.02, "permutation_p": 0.03}]}
    probe = {"meta": {"command": "p", "seconds": 120}, "variants": [{
        "variant": "chat_paraphrase",
        "summary": {"edit/question": {"n": 10, "routed_to_own_memory": 0.9, "routed_ok": 0.8,
                                      "forced_ok": 1.0, "mean_max_key_similarity": 0.95}},
        "locality": {"general_chat": {"n": 52, "routed": 0.0, "identical_to_base": 1.0}}}]}
    (tmp_path / "c.json").write_text(json.dumps(conflict))
    (tmp_path / "p.json").write_text(json.dumps(probe))
    doc = tmp_path / "README.md"
    doc.write_text("<!-- results: c.json -->\n<!-- /results -->\n"
                   "<!-- results: p.json -->\n<!-- /results -->\n")
    sync([doc], tmp_path)
    text = doc.read_text()
    assert "| 0 | -0.70 / -0.60 | 1.00 / 0.90 | -0.100 | 0.01 | 0.02 | 0.03 |" in text
    assert "| chat_paraphrase | edit/question | 10 | 0.90 | 0.80 | 1.00 | 0.95 |" in text
    assert "| chat_paraphrase | general_chat | 52 | 0.00 | 1.00 |" in text


def test_summary_has_the_sequential_protocol() -> None:
    res = _results(0.9)
    res["suites"]["zsre"]["sequential"] = {"batch": 10, "curves": [{
        "method": "loka", "flatness": {"ratio": 0.8},
        "points": [{"T": 10, "update_seconds": 30.0,
                    "metrics": {"edit_rel_acc": 1.0, "edit_gen_acc": 0.5, "unlearn_eff": 1.0,
                                "retain_ratio": float("nan"), "locality": 0.75}}]}]}
    text = summary(res)
    assert "Sequential (updates of 10 requests" in text
    assert "| zsre | `loka` | 10 | 1.00 | 0.50 | 1.00 | – | 0.75 | 30 | 0.80 |" in text


def test_summary_shows_the_old_loka_bench_command_as_it_runs_now() -> None:
    res = _results(0.9)
    res["meta"]["command"] = "loka bench run --suite all --scale small"
    assert summary(res).startswith("`python -m benchmarks run --suite all --scale small`")
