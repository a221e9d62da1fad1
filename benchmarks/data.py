"""Readers for the benchmark data (``../shared/data``, see its README): TOFU, ZsRE, CounterFact
and PKU-SafeRLHF, as plain typed records, plus the data directory lookup and file hashes."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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


# ---------------------------------------------------------------- TOFU


@dataclass(frozen=True)
class TofuQA:
    author: int
    question: str
    answer: str
    paraphrased_question: str
    paraphrased_answer: str
    perturbed_answers: tuple[str, ...]


def load_tofu(data_dir: Path, n_authors: int) -> dict[int, list[TofuQA]]:
    """QA of authors ``0 .. n_authors-1`` with paraphrases and perturbed answers, by author,
    in TOFU's order (authors 0-19 come from ``retain_perturbed``, 20-149 from
    ``extended_perturbed``)."""
    if not 1 <= n_authors <= 150:
        raise DataError(f"TOFU has authors 0-149 here; asked for {n_authors}")
    by_author: dict[int, list[TofuQA]] = {}
    for rel in ("tofu/retain_perturbed.jsonl", "tofu/extended_perturbed.jsonl"):
        for row in read_jsonl(data_dir / rel):
            a = int(row["author_index"])
            if a >= n_authors:
                continue
            by_author.setdefault(a, []).append(TofuQA(
                a, row["question"], row["answer"], row["paraphrased_question"],
                row["paraphrased_answer"], tuple(row["perturbed_answer"])))
    missing = [a for a in range(n_authors) if len(by_author.get(a, [])) != 20]
    if missing:
        raise DataError(f"TOFU: authors {missing[:5]} do not have 20 QA pairs")
    return by_author


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


def load_zsre(data_dir: Path) -> list[FactRecord]:
    out = []
    for r in read_jsonl(data_dir / "zsre/zsre_mend_train_1k.jsonl"):
        answer = r["answers"][0] if r["answers"] else r["pred"]
        out.append(FactRecord(r["subject"], r["src"], answer, r["alt"], r["rephrase"], r["loc"],
                              r["loc_ans"]))
    return out


def load_counterfact(data_dir: Path) -> list[FactRecord]:
    return [FactRecord(r["subject"], r["prompt"], r["ground_truth"], r["target_new"],
                       r["rephrase_prompt"], r["locality_prompt"], r["locality_ground_truth"])
            for r in read_jsonl(data_dir / "counterfact/counterfact.jsonl")]


# ---------------------------------------------------------------- PKU-SafeRLHF


@dataclass(frozen=True)
class SafetyPair:
    prompt: str
    safe: str
    unsafe: str


def load_pku(data_dir: Path) -> list[SafetyPair]:
    """The first response pair of every distinct prompt, in file order."""
    seen: set[str] = set()
    out = []
    for r in read_jsonl(data_dir / "pku_saferlhf/pku_saferlhf_test_pairs.jsonl"):
        if r["prompt"] in seen:
            continue
        seen.add(r["prompt"])
        out.append(SafetyPair(r["prompt"], r["response"][0], r["response"][1]))
    return out
