"""A failed part of a benchmark run is reported at once; the finished parts are kept."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest

from benchmarks import cli
from benchmarks.data import REPO_ROOT
from benchmarks.runner import RunConfig, run

DATA = REPO_ROOT.parent / "shared" / "data"


def _data_dir(tmp_path: Path) -> Path:
    """Real CounterFact; a ZsRE file whose third line is not JSON."""
    data = tmp_path / "data"
    (data / "counterfact").mkdir(parents=True)
    shutil.copy(DATA / "counterfact" / "counterfact.jsonl", data / "counterfact")
    (data / "zsre").mkdir()
    lines = (DATA / "zsre" / "zsre_mend_train_1k.jsonl").read_text().splitlines()
    lines[2] = "{not json"
    (data / "zsre" / "zsre_mend_train_1k.jsonl").write_text("\n".join(lines) + "\n")
    return data


def test_failed_part_is_reported_before_the_next_part_and_the_rest_is_kept(
        tmp_path: Path, tiny_model: Path) -> None:
    cfg = RunConfig(suites=["zsre", "counterfact"], scale="small", data_dir=_data_dir(tmp_path),
                    out=tmp_path / "out", methods=["base"], seeds=[0], analyses=set(),
                    model=tiny_model)
    seen: list[dict] = []
    results = run(cfg, on_part=lambda r: seen.append(copy.deepcopy(r)))
    # the ZsRE failure was handed over before CounterFact ran
    assert seen[0]["failures"][0]["suite"] == "zsre" and not seen[0]["suites"]
    assert "invalid JSON" in seen[0]["failures"][0]["error"]
    assert list(results["suites"]) == ["counterfact"]
    assert results["suites"]["counterfact"]["settings"]["joint"]["methods"]["base"]


def test_cli_writes_finished_parts_and_exits_non_zero(tmp_path: Path, tiny_model: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "out"
    code = cli.main(["run", "--suite", "zsre,counterfact", "--data-dir",
                     str(_data_dir(tmp_path)), "--model", str(tiny_model), "--methods", "base",
                     "--seeds", "1", "--skip", "ablations,density,sequential,conflict",
                     "--out", str(out)])
    assert code == 1
    results = json.loads((out / "results.json").read_text())
    assert [f["suite"] for f in results["failures"]] == ["zsre"]
    assert "counterfact" in results["suites"]
    md = (out / "results.md").read_text()
    assert "Failed parts" in md and "zsre / main" in md
