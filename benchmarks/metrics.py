"""Text metrics of the evaluation protocol (LOKA.md section 4), implemented here so the numbers
do not depend on a third-party scorer: ROUGE-L on word tokens, exact match, token agreement,
and mean / standard deviation over seeds."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

_WORD = re.compile(r"\w+", re.UNICODE)


def words(text: str) -> list[str]:
    """Lower-cased word tokens (punctuation dropped), as ROUGE's default tokenizer does."""
    return _WORD.findall(text.lower())


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token sequences (O(len a * len b))."""
    if not a or not b:
        return 0
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b, start=1):
            cur[j] = prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1])
        prev = cur
    return prev[-1]


def rouge_l_recall(reference: str, hypothesis: str) -> float:
    """ROUGE-L recall: LCS(reference, hypothesis) / len(reference), on word tokens.

    An empty reference has nothing to recall: 0.0."""
    ref = words(reference)
    if not ref:
        return 0.0
    return lcs_length(ref, words(hypothesis)) / len(ref)


def rouge_l_f1(reference: str, hypothesis: str) -> float:
    """ROUGE-L F-measure (beta = 1) on word tokens."""
    ref, hyp = words(reference), words(hypothesis)
    lcs = lcs_length(ref, hyp)
    if lcs == 0:
        return 0.0
    p, r = lcs / len(hyp), lcs / len(ref)
    return 2 * p * r / (p + r)


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
