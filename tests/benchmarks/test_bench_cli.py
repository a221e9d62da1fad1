"""The command line: ``python -m benchmarks prepare|run``: parsing and input errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import cli


def test_parser_has_prepare_and_run() -> None:
    args = cli.build_parser().parse_args(["run", "--suite", "zsre", "--suite", "tofu,pku",
                                 "--methods", "loka", "npo_kl", "--seeds", "1", "--skip",
                                 "sequential", "--jobs", "2"])
    assert args.func is cli.cmd_run
    assert cli._suites(args.suite) == ["zsre", "tofu", "pku"]
    assert (args.methods, args.seeds, args.skip, args.jobs) == (["loka", "npo_kl"], 1,
                                                                ["sequential"], 2)
    args = cli.build_parser().parse_args(["prepare", "--scale", "full", "--force"])
    assert args.func is cli.cmd_prepare and args.scale == "full" and args.force


def test_suite_names() -> None:
    assert cli._suites(["all"]) == ["tofu", "zsre", "counterfact", "pku"]
    with pytest.raises(SystemExit, match="unknown suite"):
        cli._suites(["squad"])


def test_run_rejects_bad_input_before_any_work(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "--methods", "rome", "--data-dir", str(tmp_path)]) == 2
    assert "unknown method" in capsys.readouterr().err
    assert cli.main(["run", "--skip", "everything", "--data-dir", str(tmp_path)]) == 2
    assert cli.main(["run", "--data-dir", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["prepare", "--data-dir", str(tmp_path / "missing")]) == 2
