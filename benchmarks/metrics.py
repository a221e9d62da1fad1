"""Text metrics of the evaluation protocol (LOKA.md section 4): ROUGE-L as TOFU computes it
(the ``rouge-score`` package, Porter stemming), exact match, token agreement, the
length-normalised probability of a scored answer, and mean / standard deviation over seeds."""

from __future__ import annotations

import math
from collections.abc import Sequence

from rouge_score import rouge_scorer

# one scorer for every call; TOFU's eval builds RougeScorer(..., use_stemmer=True) and reports
# the rougeL recall of the ground truth in the generation. Its tokenizer lower-cases and keeps
# only [a-z0-9] runs (so "Müller" is two tokens, "m" and "ller"), as TOFU's numbers do.
_SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l_recall(reference: str, hypothesis: str) -> float:
    """ROUGE-L recall of ``reference`` in ``hypothesis`` (``rouge-score``'s rougeL, stemmed):
    LCS / number of reference tokens. An empty reference or hypothesis scores 0.0."""
    return float(_SCORER.score(reference, hypothesis)["rougeL"].recall)


def rouge_l_f1(reference: str, hypothesis: str) -> float:
    """ROUGE-L F-measure (beta = 1) of the same scorer."""
    return float(_SCORER.score(reference, hypothesis)["rougeL"].fmeasure)


def mean_token_prob(logprob: float, n_tokens: int) -> float:
    """Length-normalised probability of an answer: exp(summed log-probability / tokens), the
    per-token geometric mean (TOFU's "probability"); NaN for an answer of no tokens."""
    return math.exp(logprob / n_tokens) if n_tokens > 0 else float("nan")


def _norm(text: str) -> str:
    return " ".join(text.split()).lower()


def exact_match(target: str, output: str) -> bool:
    """Greedy exact match: the output starts with the target (whitespace and case folded).

    "Starts with" because a model may go on after the answer; an edited model that stops at
    EOS and one that continues are scored alike."""
    t = _norm(target)
    return bool(t) and _norm(output).startswith(t)


def token_agreement(before: Sequence[int], after: Sequence[int]) -> float:
    """Fraction of positions at which two greedy outputs have the same token, over the longer
    output (identical outputs: 1.0; two empty outputs: 1.0)."""
    n = max(len(before), len(after))
    if n == 0:
        return 1.0
    same = sum(1 for x, y in zip(before, after, strict=False) if x == y)
    return same / n


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean; NaN for an empty sequence (a metric that does not apply)."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return sum(vals) / len(vals) if vals else float("nan")


def std(values: Sequence[float]) -> float:
    """Sample standard deviation (n - 1); 0.0 for a single value, NaN for none."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return float("nan")
    if len(vals) == 1:
        return 0.0
    m = sum(vals) / len(vals)
    return math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))
