"""The TOFU section of ``results.md``: forget quality and model utility per method and setting,
and the base / retain-only reference models' accuracy on their training QA."""

from __future__ import annotations

from typing import Any

from benchmarks.tofu_metrics import UTILITY_SETS

COLUMNS = [("forget_quality", "forget quality"), ("model_utility", "model utility"),
           ("forget_truth_ratio", "forget TR"), ("forget_rouge", "forget ROUGE-L")]
COLUMNS += [(f"{s}_{p}", f"{s.replace('_', ' ')} {h}") for s in UTILITY_SETS
            for p, h in (("prob", "prob."), ("rouge", "ROUGE-L"), ("truth_ratio", "TR"))]


def _num(value: Any, small: bool = False) -> str:
    """Two decimals; ``small`` values under 0.01 (p-values) with two significant digits."""
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    return f"{value:.2g}" if small and 0 < abs(value) < 0.01 else f"{value:.2f}"


def _cell(mean: Any, std: Any, seeds: int, small: bool = False) -> str:
    text = _num(mean, small)
    if seeds > 1 and text != "–" and std is not None:
        text += f" ± {_num(std)}"
    return text


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def tofu_section(name: str, suite: dict[str, Any], seeds: int) -> list[str]:
    """Markdown blocks of one TOFU suite (empty if the run has no TOFU numbers)."""
    tofu = suite.get("tofu")
    if not tofu:
        return []
    splits = ", ".join(f"{k}: authors {', '.join(map(str, v))}"
                       for k, v in tofu["splits"].items())
    merged = suite.get("sizes", {}).get("forget_splits_merged", {})
    same = [f"{k} = {v}" for k, v in merged.items() if k != v]
    out = [f"## TOFU: forget quality and model utility ({name})\n",
           f"Forget splits, scaled to the loaded authors: {splits}"
           + (f" ({'; '.join(same)}: the same authors at this scale)" if same else "") + ".\n",
           "Forget quality = KS-test p-value between the forget set's truth ratios under the "
           "method and under the retain-only reference model (never trained on the forget "
           "authors); model utility = harmonic mean of probability, ROUGE-L recall and truth "
           "ratio on the retain set, real authors and world facts (TOFU's definitions, "
           "`benchmarks/tofu_metrics.py`). TR = truth-ratio statistic (forget: mean "
           "min(R, 1/R); others: mean max(0, 1 − R)).\n"]
    rows = [[k, v.get("path", "").rsplit("/", 1)[-1], _num(v.get("train_rouge")),
             ", ".join(map(str, v.get("forget_authors", []))) or "–"]
            for k, v in tofu["models"].items()]
    out.append(_table(["model", "directory", "ROUGE-L on its training QA",
                       "authors left out"], rows) + "\n")
    header = ["method", *[h for _, h in COLUMNS]]
    for sname, s in suite["settings"].items():
        rows = []
        for m, agg in s["methods"].items():
            if "forget_quality" not in agg["mean"]:
                continue
            rows.append([f"`{m}`", *[_cell(agg["mean"].get(c), agg["std"].get(c), seeds,
                                           c == "forget_quality") for c, _ in COLUMNS]])
        ref = tofu["reference"].get(f"{name}/{sname}")
        if ref:
            rows.append(["retain-only reference", "1.00 (itself)",
                         *[_num(ref.get(c)) for c, _ in COLUMNS[1:]]])
        if rows:
            out.append(f"#### {name} / {sname}\n")
            out.append(_table(header, rows) + "\n")
    return out
