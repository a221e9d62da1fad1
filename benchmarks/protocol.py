"""What a benchmark is made of: the cases (edit / unlearn requests and what they are evaluated
on), the settings (one joint update each), the sequential stream and the base model's corpus."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from memory_store.types import PieceKind, PieceSpec, RetainSpec

if TYPE_CHECKING:
    from benchmarks.tofu_metrics import TofuSets

Pair = tuple[str, str]


@dataclass(frozen=True)
class Case:
    """One request and its evaluation data.

    ``target`` is the new answer (edit) or the answer to forget (unlearn), with its leading
    space. ``paraphrases`` are held out: they are never given to a method, only used to measure
    generality. ``old_answer`` is what the base model was trained to answer (edits);
    ``alt_answers`` are other phrasings of a forgotten answer (TOFU's paraphrased answers)."""

    kind: PieceKind
    prompt: str
    target: str
    paraphrases: tuple[str, ...] = ()
    old_answer: str | None = None
    alt_answers: tuple[str, ...] = ()
    group: str = ""

    def spec(self) -> PieceSpec:
        return PieceSpec(self.kind, self.prompt, self.target)


def interleave(edits: tuple[Case, ...], unlearns: tuple[Case, ...]) -> tuple[Case, ...]:
    """e0, u0, e1, u1, ...: every prefix holds both kinds in equal parts."""
    out: list[Case] = []
    for i in range(max(len(edits), len(unlearns))):
        out += [c[i] for c in (edits, unlearns) if i < len(c)]
    return tuple(out)


@dataclass(frozen=True)
class Setting:
    """One joint update (edits and unlearning at once) and its evaluation sets."""

    suite: str
    name: str
    edits: tuple[Case, ...]
    unlearns: tuple[Case, ...]
    retain_train: tuple[RetainSpec, ...]  # given to every method
    retain_eval: tuple[Pair, ...]  # D_r: known facts no request touches
    locality: tuple[Pair, ...]  # D_g: general inputs (prompt, the base's trained answer)
    description: str = ""

    @property
    def key(self) -> str:
        return f"{self.suite}/{self.name}"

    @property
    def cases(self) -> tuple[Case, ...]:
        return interleave(self.edits, self.unlearns)

    def pieces(self) -> list[PieceSpec]:
        return [c.spec() for c in self.cases]


@dataclass(frozen=True)
class Sequential:
    """T requests applied in batches, one update after another (WISE's protocol); the model is
    evaluated on all requests applied so far at each checkpoint."""

    setting: Setting  # its edits/unlearns hold the whole stream; retain/locality as usual
    batch: int
    checkpoints: tuple[int, ...]

    @property
    def stream(self) -> tuple[Case, ...]:
        return self.setting.cases


@dataclass(frozen=True)
class BaseCorpus:
    """What ``prepare`` teaches the base model: canonical prompts, their other phrasings, and
    general knowledge (the locality set)."""

    canonical: tuple[Pair, ...]
    paraphrase: tuple[Pair, ...]
    general: tuple[Pair, ...]

    def all_pairs(self) -> list[Pair]:
        return [*self.canonical, *self.paraphrase, *self.general]


@dataclass(frozen=True)
class Suite:
    name: str
    scale: str
    corpus: BaseCorpus
    settings: tuple[Setting, ...]
    sequential: Sequential | None
    data_files: tuple[Path, ...]
    sizes: dict = field(default_factory=dict)
    # (in-profile, out-profile) setting names for the conflict histogram
    conflict_pair: tuple[str, str] | None = None
    # TOFU only: truth-ratio data, forget splits and their retain-only corpora
    tofu: TofuSets | None = None

    def setting(self, name: str) -> Setting:
        for s in self.settings:
            if s.name == name:
                return s
        raise KeyError(f"{self.name} has no setting {name!r}")


def answer(text: str, max_words: int | None) -> str:
    """A target with its leading space, cut to ``max_words`` words (None: whole)."""
    parts = text.split()
    if max_words is not None:
        parts = parts[:max_words]
    return " " + " ".join(parts)
