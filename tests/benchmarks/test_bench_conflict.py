"""The conflict analysis: numpy two-sample tests, the histogram through the engine's warm-up,
its report and files, and the ``conflict`` command's parser."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from benchmarks.cli import build_parser
from benchmarks.conflict import TRAJECTORY_STEPS, conflict_histogram, seed_row, write_conflict
from benchmarks.methods import Budget
from benchmarks.protocol import Case, Setting
from benchmarks.report import conflict_section
from benchmarks.stats import ks_2samp, mann_whitney_u, permutation_test
from memory_store.types import PieceKind


def test_ks_and_mann_whitney_known_values():
    same = [0.1, 0.2, 0.3, 0.4]
    assert ks_2samp(same, same) == {"statistic": 0.0, "p_value": 1.0}
    low, high = [1.0, 2.0, 3.0, 4.0, 5.0], [6.0, 7.0, 8.0, 9.0, 10.0]
    ks = ks_2samp(low, high)
    assert ks["statistic"] == 1.0 and ks["p_value"] < 0.01
    mw = mann_whitney_u(high, low)  # every high beats every low
    assert mw["statistic"] == 25.0 and mw["effect"] == 1.0
    # normal approximation with continuity correction: z = 12 / sqrt(25 * 11 / 12)
    assert mw["p_value"] == pytest.approx(math.erfc(12 / math.sqrt(275 / 12) / math.sqrt(2)))
    tied = mann_whitney_u([1.0, 1.0, 2.0], [1.0, 2.0, 2.0])
    assert tied["statistic"] == pytest.approx(3.0)  # 1 win (2 > 1) + 4 ties / 2


def test_permutation_test():
    rng = np.random.default_rng(0)
    x, y = rng.normal(0, 1, 30), rng.normal(0, 1, 30)
    p = permutation_test(x, y, 2000)
    assert p["statistic"] == pytest.approx(x.mean() - y.mean()) and 0.05 < p["p_value"] <= 1
    assert permutation_test(x + 3, y, 2000)["p_value"] < 0.001


def _setting(name: str, edit_groups: list[str]) -> Setting:
    edits = tuple(Case(PieceKind.EDIT, f"fact {i} of {g}?", f" answer {i}", group=g)
                  for i, g in enumerate(edit_groups))
    unlearns = tuple(Case(PieceKind.UNLEARN, f"secret {i} of a?", f" value {i}", group="a")
                     for i in range(2))
    return Setting("toy", name, edits, unlearns, (), (), ())


def test_histogram_through_the_engine_warm_up(tiny_model: Path, tmp_path: Path):
    budget = Budget(rank=2, alpha=4.0, steps=2)
    result = conflict_histogram(tiny_model, _setting("in_profile", ["a", "a"]),
                                _setting("out_profile", ["b", "c"]), budget, seed=0,
                                warmup_steps=2)
    assert result["warmup_steps"] == 2
    assert result["in_profile"]["n"] == result["out_profile"]["n"] == 4
    cos = result["in_profile"]["cosines"]
    assert all(-1 <= c <= 1 for c in cos) and len(set(cos)) > 1
    assert [t["warmup_steps"] for t in result["trajectory"]] == list(TRAJECTORY_STEPS)
    at_2 = next(t for t in result["trajectory"] if t["warmup_steps"] == 2)
    assert at_2["in_profile"]["mean"] == pytest.approx(result["in_profile"]["mean"], abs=1e-4)
    assert set(result["stats"]) == {"ks", "mann_whitney", "permutation"}
    text = conflict_section(result)
    assert "Kolmogorov–Smirnov" in text and "| 10 |" in text
    result["per_seed"] = [seed_row(result), {**seed_row(result), "seed": 1}]
    assert "| 1 |" in conflict_section(result) and "10 steps" in conflict_section(result)
    result["meta"] = {"model": "tiny", "command": "x", "seconds": 1.0}
    written = write_conflict(result, tmp_path / "out")
    assert {p.name for p in written} == {"conflict.json", "conflict.md", "conflict_tofu.png"}
    assert json.loads((tmp_path / "out" / "conflict.json").read_text())["warmup_steps"] == 2


def test_conflict_command_parses():
    args = build_parser().parse_args(["conflict", "--model", "smollm2", "--out", "x"])
    assert args.model == "smollm2" and args.out == Path("x")
    args = build_parser().parse_args(["conflict"])
    assert args.model == "tiny" and args.seeds == 3
