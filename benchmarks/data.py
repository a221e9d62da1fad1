"""Readers for the benchmark data (``../shared/data``, see its README): TOFU, ZsRE, CounterFact
and PKU-SafeRLHF, as plain typed records, plus the data directory lookup and file hashes.

The ZsRE, CounterFact and PKU readers skip a row whose prompt or answer text is missing or
blank (ZsRE has a record with an empty ``alt``) and count it in a :class:`SkipReport`, by
reason; a skipped row is never fatal."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

logger = logging.getLogger(__name__)
T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_ENV = "LOKA_BENCH_DATA"

# files each suite reads, relative to the data directory
SUITE_FILES: dict[str, tuple[str, ...]] = {
    "tofu": ("tofu/retain_perturbed.jsonl", "tofu/extended_perturbed.jsonl",
             "tofu/real_authors_perturbed.jsonl", "tofu/world_facts_perturbed.jsonl"),
    "zsre": ("zsre/zsre_mend_train_1k.jsonl",),
    "counterfact": ("counterfact/counterfact.jsonl",),
    # PKU's locality set is TOFU's general knowledge (world facts, real authors)
    "pku": ("pku_saferlhf/pku_saferlhf_test_pairs.jsonl", "tofu/real_authors_perturbed.jsonl",
            "tofu/world_facts_perturbed.jsonl"),
}


class DataError(RuntimeError):
    """The benchmark data is missing or malformed."""


def resolve_data_dir(path: str | Path | None = None) -> Path:
    """``path``, else ``$LOKA_BENCH_DATA``, else ``../shared/data`` next to the repository."""
    chosen = Path(path) if path else Path(os.environ.get(DATA_ENV) or
                                          REPO_ROOT.parent / "shared" / "data")
    if not chosen.is_dir():
        raise DataError(f"benchmark data directory {chosen} does not exist: pass --data-dir or "
                        f"set {DATA_ENV} (the layout is described in shared/data/README.md)")
    return chosen


def check_files(data_dir: Path, suite: str) -> list[Path]:
    """The suite's data files; ``DataError`` naming the first missing one."""
    paths = [data_dir / rel for rel in SUITE_FILES[suite]]
    for p in paths:
        if not p.is_file():
            raise DataError(f"{suite}: missing data file {p}")
    return paths


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def data_hashes(data_dir: Path, suite: str) -> dict[str, str]:
    """sha256 of every file the suite reads, by path relative to the data directory."""
    return {rel: sha256_file(data_dir / rel) for rel in SUITE_FILES[suite]}


def read_jsonl(path: Path) -> Iterator[dict]:
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{n}: invalid JSON ({exc.msg})") from exc


@dataclass
class SkipReport:
    """Rows of one data file: how many were read and how many were skipped, by reason
    (``"empty alt"``: the first blank or missing text field of the row)."""

    file: str  # relative to the data directory
    total_rows: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"total_rows": n, "skipped": {reason: count}}``."""
        return {"total_rows": self.total_rows, "skipped": dict(self.skipped)}

    def log(self) -> None:
        if self.skipped:
            logger.warning("%s: skipped %d of %d rows (%s)", self.file, self.n_skipped,
                           self.total_rows, ", ".join(f"{k}: {v}" for k, v in
                                                      sorted(self.skipped.items())))


@dataclass(frozen=True)
class Loaded(Generic[T]):
    """What a reader kept, and its report on the rows it skipped."""

    rows: list[T]
    report: SkipReport


def _blank(row: dict, names: tuple[str, ...]) -> str | None:
    """The first of ``names`` whose value is missing, not a string, or whitespace only."""
    for name in names:
        value = row.get(name)
        if not isinstance(value, str) or not value.strip():
            return name
    return None


def _read_checked(data_dir: Path, report: SkipReport,
                  check: Callable[[dict], str | None]) -> Iterator[dict]:
    """Rows of ``report.file`` that pass ``check(row) -> reason | None``; the others are counted
    in ``report`` (complete, and logged, once the rows run out)."""
    for row in read_jsonl(data_dir / report.file):
        report.total_rows += 1
        reason = check(row) if isinstance(row, dict) else "not an object"
        if reason is None:
            yield row
        else:
            report.skip(reason)
    report.log()


# ---------------------------------------------------------------- TOFU


@dataclass(frozen=True)
class TofuQA:
    author: int
    question: str
    answer: str
    paraphrased_question: str
    paraphrased_answer: str
    perturbed_answers: tuple[str, ...]


# authors 0-149 of TOFU's 200 are in this copy of the data (shared/data/README.md)
TOFU_AUTHORS = 200
TOFU_AVAILABLE = range(150)
# TOFU's official forget splits: the last 1% / 5% / 10% of its 200 authors
TOFU_SPLITS = {"forget01": 0.01, "forget05": 0.05, "forget10": 0.10}


def load_tofu(data_dir: Path, authors: int | Sequence[int]) -> dict[int, list[TofuQA]]:
    """QA of ``authors`` (author indices, any order and any gaps; an int ``n`` means authors
    ``0 .. n-1``) with paraphrases and perturbed answers, by author, 20 each in TOFU's order
    (authors 0-19 come from ``retain_perturbed``, 20-149 from ``extended_perturbed``)."""
    wanted = set(range(authors)) if isinstance(authors, int) else {int(a) for a in authors}
    if not wanted:
        raise DataError("TOFU: no authors asked for")
    outside = sorted(a for a in wanted if a not in TOFU_AVAILABLE)
    if outside:
        raise DataError(f"TOFU has authors 0-149 here; asked for {outside[:5]}")
    by_author: dict[int, list[TofuQA]] = {}
    for rel in ("tofu/retain_perturbed.jsonl", "tofu/extended_perturbed.jsonl"):
        for row in read_jsonl(data_dir / rel):
            a = int(row["author_index"])
            if a not in wanted:
                continue
            by_author.setdefault(a, []).append(TofuQA(
                a, row["question"], row["answer"], row["paraphrased_question"],
                row["paraphrased_answer"], tuple(row["perturbed_answer"])))
    missing = [a for a in sorted(wanted) if len(by_author.get(a, [])) != 20]
    if missing:
        raise DataError(f"TOFU: authors {missing[:5]} do not have 20 QA pairs")
    return {a: by_author[a] for a in sorted(wanted)}


def split_size(name: str, n_authors: int) -> int:
    """How many authors split ``name`` (forget01/05/10) forgets out of ``n_authors``: its share,
    rounded, at least one."""
    if name not in TOFU_SPLITS:
        raise DataError(f"unknown TOFU split {name!r}; choose from {', '.join(TOFU_SPLITS)}")
    return max(1, round(TOFU_SPLITS[name] * n_authors))


def tofu_split(name: str | Sequence[int], authors: Sequence[int] | None = None) -> list[int]:
    """The forget authors of a split.

    ``name`` is one of TOFU's splits or an explicit list of author indices (returned sorted).
    Without ``authors`` a split is TOFU's official one, the last 1% / 5% / 10% of the 200
    authors (forget01 = 198-199, forget05 = 190-199, forget10 = 180-199); those authors are not
    in this copy of the data (it holds 0-149), so loading them raises ``DataError``. With
    ``authors`` (the loaded ones) the split is scaled down the same way: the last 1% / 5% / 10%
    of them, at least one author."""
    if not isinstance(name, str):
        return sorted({int(a) for a in name})
    pool = sorted(authors) if authors is not None else list(range(TOFU_AUTHORS))
    return pool[len(pool) - split_size(name, len(pool)):]


@dataclass(frozen=True)
class ControlQA:
    """A question of TOFU's control sets (real authors, world facts) and its perturbed
    (wrong) answers; the answer itself stands in for the paraphrase in the truth ratio."""

    set: str  # "real_authors" or "world_facts"
    question: str
    answer: str
    perturbed_answers: tuple[str, ...]


def load_tofu_control(data_dir: Path) -> dict[str, list[ControlQA]]:
    """TOFU's model-utility control sets by name, in file order: ``real_authors`` (100) and
    ``world_facts`` (117)."""
    out: dict[str, list[ControlQA]] = {}
    for name in ("real_authors", "world_facts"):
        out[name] = [ControlQA(name, r["question"], r["answer"], tuple(r["perturbed_answer"]))
                     for r in read_jsonl(data_dir / f"tofu/{name}_perturbed.jsonl")]
    return out


def load_tofu_general(data_dir: Path) -> list[tuple[str, str]]:
    """(question, answer) of TOFU's real-author and world-fact sets, interleaved so that any
    prefix mixes both."""
    authors = [(r["question"], r["answer"])
               for r in read_jsonl(data_dir / "tofu/real_authors_perturbed.jsonl")]
    facts = [(r["question"], r["answer"])
             for r in read_jsonl(data_dir / "tofu/world_facts_perturbed.jsonl")]
    out = []
    for i in range(max(len(authors), len(facts))):
        out += [x[i] for x in (authors, facts) if i < len(x)]
    return out


# ---------------------------------------------------------------- ZsRE and CounterFact


@dataclass(frozen=True)
class FactRecord:
    """One editable fact: ``prompt -> answer`` (true), edit target ``new``, a held-out
    ``paraphrase`` and an unrelated locality pair."""

    subject: str
    prompt: str
    answer: str
    new: str
    paraphrase: str
    loc_prompt: str
    loc_answer: str


ZSRE_FILE = "zsre/zsre_mend_train_1k.jsonl"
COUNTERFACT_FILE = "counterfact/counterfact.jsonl"
PKU_FILE = "pku_saferlhf/pku_saferlhf_test_pairs.jsonl"


def _zsre_answer(row: dict) -> str:
    """The first non-blank gold answer, else the old model's prediction (``pred``)."""
    answers = row.get("answers")
    for a in answers if isinstance(answers, list) else ():
        if isinstance(a, str) and a.strip():
            return a
    pred = row.get("pred")
    return pred if isinstance(pred, str) else ""


def _check_zsre(row: dict) -> str | None:
    blank = _blank(row, ("src", "rephrase", "alt", "loc", "loc_ans"))
    if blank is not None:
        return f"empty {blank}"
    return None if _zsre_answer(row).strip() else "empty answers"


def load_zsre(data_dir: Path) -> Loaded[FactRecord]:
    """ZsRE facts ``src -> answers[0]`` (edit target ``alt``), in file order."""
    rows, report = [], SkipReport(ZSRE_FILE)
    for r in _read_checked(data_dir, report, _check_zsre):
        rows.append(FactRecord(str(r.get("subject") or ""), r["src"], _zsre_answer(r), r["alt"],
                               r["rephrase"], r["loc"], r["loc_ans"]))
    return Loaded(rows, report)


_COUNTERFACT_TEXT = ("prompt", "target_new", "ground_truth", "rephrase_prompt",
                     "locality_prompt", "locality_ground_truth")


def load_counterfact(data_dir: Path) -> Loaded[FactRecord]:
    """CounterFact facts ``prompt -> ground_truth`` (edit target ``target_new``), in file
    order."""
    def check(row: dict) -> str | None:
        blank = _blank(row, _COUNTERFACT_TEXT)
        return None if blank is None else f"empty {blank}"

    rows, report = [], SkipReport(COUNTERFACT_FILE)
    for r in _read_checked(data_dir, report, check):
        rows.append(FactRecord(str(r.get("subject") or ""), r["prompt"], r["ground_truth"],
                               r["target_new"], r["rephrase_prompt"], r["locality_prompt"],
                               r["locality_ground_truth"]))
    return Loaded(rows, report)


# ---------------------------------------------------------------- PKU-SafeRLHF


@dataclass(frozen=True)
class SafetyPair:
    prompt: str
    safe: str
    unsafe: str


def _check_pku(row: dict) -> str | None:
    if _blank(row, ("prompt",)):
        return "empty prompt"
    response = row.get("response")
    if not isinstance(response, list) or len(response) != 2:
        return "response is not a pair"
    for name, text in zip(("safe", "unsafe"), response, strict=True):
        if not isinstance(text, str) or not text.strip():
            return f"empty {name} response"
    return None


def load_pku(data_dir: Path) -> Loaded[SafetyPair]:
    """The first complete response pair of every distinct prompt, in file order."""
    seen: set[str] = set()
    out, report = [], SkipReport(PKU_FILE)
    for r in _read_checked(data_dir, report, _check_pku):
        if r["prompt"] in seen:
            continue
        seen.add(r["prompt"])
        out.append(SafetyPair(r["prompt"], r["response"][0], r["response"][1]))
    return Loaded(out, report)
