"""TOFU's forget quality and model utility (Maini et al. 2024, arXiv:2401.06121), computed as
TOFU's released evaluation code computes them (``aggregate_stat.py``).

Every probability is length-normalised: ``p(a | q) = exp(log P(a | q) / tokens(a))``.

- **Truth ratio** of one question: ``R = p_pert / p_para`` where ``p_para`` is the paraphrased
  answer's probability (on the control sets, the answer's own) and ``p_pert`` the arithmetic
  mean of the perturbed answers' probabilities (the paper's definition, and TOFU's
  ``get_model_utility``). The forget set reports ``mean(min(R, 1/R))``; the retain and control
  sets ``mean(max(0, 1 - R))`` (higher: the model prefers the true answer).
- **Probability**: on the retain and forget sets the mean of ``p(answer)``; on the control sets
  the mean of ``p(answer) / (p(answer) + sum of p(perturbed))``.
- **ROUGE-L**: recall of the answer in the greedy output
  (:func:`benchmarks.metrics.rouge_l_recall`).
- **Forget quality**: the p-value of the two-sample Kolmogorov-Smirnov test between the forget
  set's truth ratios under the unlearned model and under the retain-only reference model
  (never trained on the forget authors). As in TOFU's ``get_forget_quality``, these ratios
  average the perturbed answers' per-token losses (a geometric mean of their probabilities):
  ``exp(mean perturbed loss - paraphrased loss)``. ``scipy.stats.ks_2samp`` when scipy is
  installed; else the same exact two-sided p-value computed here by counting lattice paths.
- **Model utility**: the harmonic mean of the nine numbers (probability, ROUGE-L, truth ratio)
  on the retain set, the real authors and the world facts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction

from benchmarks.metrics import mean, rouge_l_recall
from benchmarks.protocol import BaseCorpus
from benchmarks.stats import ks_statistic

UTILITY_SETS = ("retain", "real_authors", "world_facts")
UTILITY_PARTS = ("prob", "rouge", "truth_ratio")

try:  # scipy is optional: the exact p-value below is the same for the sizes used here
    from scipy.stats import ks_2samp as _scipy_ks
except ImportError:  # pragma: no cover - depends on the environment
    _scipy_ks = None


# ---------------------------------------------------------------- statistics


def norm_prob(logprob: float, n_tokens: int) -> float:
    """``exp(logprob / n_tokens)``; NaN for an answer of no tokens."""
    return math.exp(logprob / n_tokens) if n_tokens > 0 else float("nan")


def truth_ratio(para_logp: float, para_len: int, pert_logps: Sequence[float],
                pert_lens: Sequence[int]) -> float:
    """``R = mean(p_pert) / p_para`` of one question, length-normalised probabilities (the
    statistic model utility and the reported truth ratios use); NaN without perturbed
    answers."""
    probs = [norm_prob(lp, n) for lp, n in zip(pert_logps, pert_lens, strict=True) if n > 0]
    if not probs or para_len <= 0:
        return float("nan")
    return (sum(probs) / len(probs)) / norm_prob(para_logp, para_len)


def ks_truth_ratio(para_logp: float, para_len: int, pert_logps: Sequence[float],
                   pert_lens: Sequence[int]) -> float:
    """What TOFU's forget quality feeds the KS test for one question:
    ``exp(mean perturbed per-token loss - paraphrased per-token loss)`` (the inverse of ``R``
    with a geometric mean of the perturbed probabilities); NaN without perturbed answers."""
    losses = [-lp / n for lp, n in zip(pert_logps, pert_lens, strict=True) if n > 0]
    if not losses or para_len <= 0:
        return float("nan")
    return math.exp(sum(losses) / len(losses) + para_logp / para_len)


def forget_truth_stat(ratios: Sequence[float]) -> float:
    """What TOFU reports on the forget set: ``mean(min(R, 1/R))``."""
    return mean([min(r, 1 / r) for r in ratios if r > 0])


def retain_truth_stat(ratios: Sequence[float]) -> float:
    """What TOFU reports on the retain and control sets: ``mean(max(0, 1 - R))``."""
    return mean([max(0.0, 1 - r) for r in ratios])


def control_prob(true_logp: float, true_len: int, pert_logps: Sequence[float],
                 pert_lens: Sequence[int]) -> float:
    """``p(answer) / (p(answer) + sum of p(perturbed))`` with length-normalised p."""
    p = norm_prob(true_logp, true_len)
    return p / (p + sum(norm_prob(lp, n) for lp, n in zip(pert_logps, pert_lens, strict=True)))


def harmonic_mean(values: Sequence[float]) -> float:
    """Harmonic mean (``scipy.stats.hmean``): 0.0 if any value is 0, NaN if any is NaN or
    negative, or there are none."""
    vals = list(values)
    if not vals or any(math.isnan(v) or v < 0 for v in vals):
        return float("nan")
    if any(v == 0 for v in vals):
        return 0.0
    return len(vals) / sum(1 / v for v in vals)


def _ks_exact_pvalue(n: int, m: int, d: float) -> float:
    """P(D >= d) for samples of sizes n and m under H0, exactly: the share of the C(n+m, n)
    monotone lattice paths from (0, 0) to (n, m) that reach a point with |i/n - j/m| >= d
    (scipy's ``method="exact"``, two-sided)."""
    g = math.gcd(n, m)
    lcm = n // g * m
    h = round(d * lcm)  # d on the lattice of attainable values, as scipy rounds it
    if h == 0:
        return 1.0
    bound = h * g  # |i/n - j/m| >= h/lcm  <=>  |i*m - j*n| >= h*g

    def inside(i: int, j: int) -> bool:
        return abs(i * m - j * n) < bound

    # paths that stay strictly inside the band, counted with exact integers
    row = [0] * (m + 1)
    for j in range(m + 1):
        row[j] = (row[j - 1] if j else 1) if inside(0, j) else 0
    for i in range(1, n + 1):
        new = [0] * (m + 1)
        for j in range(m + 1):
            if inside(i, j):
                new[j] = row[j] + (new[j - 1] if j else 0)
        row = new
    return float(1 - Fraction(row[m], math.comb(n + m, n)))


def ks_2samp(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """(statistic, two-sided p-value) of the two-sample KS test; scipy's ``ks_2samp`` when
    installed, else the exact p-value (what scipy uses for samples up to 10,000)."""
    x = [v for v in x if not math.isnan(v)]
    y = [v for v in y if not math.isnan(v)]
    if not x or not y:
        return float("nan"), float("nan")
    if _scipy_ks is not None:
        res = _scipy_ks(x, y)
        return float(res.statistic), float(res.pvalue)
    d = ks_statistic(x, y)
    return d, _ks_exact_pvalue(len(x), len(y), d)


def forget_quality(unlearned: Sequence[float], reference: Sequence[float]) -> float:
    """KS-test p-value between the forget set's truth ratios of the unlearned model and of the
    retain-only reference model (1.0: indistinguishable)."""
    return ks_2samp(unlearned, reference)[1]


def model_utility(parts: dict[str, float]) -> float:
    """Harmonic mean of ``parts[f"{set}_{part}"]`` over :data:`UTILITY_SETS` x
    :data:`UTILITY_PARTS` (the sets present)."""
    return harmonic_mean([parts[f"{s}_{p}"] for s in UTILITY_SETS for p in UTILITY_PARTS
                          if f"{s}_{p}" in parts])


# ---------------------------------------------------------------- evaluation of a served model


@dataclass(frozen=True)
class TruthItem:
    """What the truth ratio of one question needs: the answer, the answer to compare the
    perturbed ones with (the paraphrase, or the answer on the control sets), the perturbed
    answers, and the question's set (forget/retain, ``real_authors``, ``world_facts``)."""

    answer: str
    base_answer: str
    perturbed: tuple[str, ...]
    set: str


@dataclass(frozen=True)
class TofuSets:
    """What a TOFU suite adds for forget quality and model utility: the truth-ratio data of
    every question it may evaluate (its authors' QA and the control questions), the forget
    authors of each split, which split each setting forgets, and each split's retain-only
    corpus (the base corpus without the forget authors' QA, for the reference model)."""

    items: dict[str, TruthItem]
    splits: dict[str, tuple[int, ...]]
    setting_split: dict[str, str]
    retain_corpora: dict[str, BaseCorpus]

    def forget_items(self, prompts: Sequence[str]) -> dict[str, TruthItem]:
        return {q: self.items[q] for q in prompts}

    def utility_items(self, retain: Sequence[str], control: Sequence[str]
                      ) -> dict[str, TruthItem]:
        """The retain questions (tagged ``retain``) and the control questions."""
        out = {q: TruthItem(self.items[q].answer, self.items[q].base_answer,
                            self.items[q].perturbed, "retain") for q in retain}
        out.update({q: self.items[q] for q in control if q in self.items})
        return out


ScoreFn = Callable[[list[tuple[str, str]]], list[tuple[float, float]]]


def truth_pairs(items: dict[str, TruthItem]) -> list[tuple[str, str]]:
    """Every (question, answer) pair the evaluation scores."""
    out = [(q, a) for q, it in items.items() for a in (it.answer, it.base_answer, *it.perturbed)]
    return list(dict.fromkeys(out))


def truth_ratios(items: dict[str, TruthItem], logp: dict[tuple[str, str], float],
                 n_tokens: Callable[[str], int], ratio: Callable[..., float] = truth_ratio
                 ) -> dict[str, float]:
    """``ratio`` (:func:`truth_ratio` or :func:`ks_truth_ratio`) of every question of ``items``
    from the scored log-probabilities."""
    return {q: ratio(logp[(q, it.base_answer)], n_tokens(it.base_answer),
                     [logp[(q, a)] for a in it.perturbed], [n_tokens(a) for a in it.perturbed])
            for q, it in items.items()}


def tofu_scores(score: ScoreFn, texts: dict[str, str], n_tokens: Callable[[str], int],
                forget: dict[str, TruthItem], utility: dict[str, TruthItem]
                ) -> dict[str, float | list[float]]:
    """TOFU's numbers of one model: ``forget_truth_ratios`` (per forget question, what the KS
    test of forget quality compares: :func:`ks_truth_ratio`),
    ``forget_{prob,rouge,truth_ratio}``, ``{retain,real_authors,world_facts}_{prob,rouge,
    truth_ratio}`` and ``model_utility``.

    ``score`` is the served model's teacher-forced scorer, ``texts`` its greedy outputs by
    prompt (every question of ``forget`` and ``utility``); ``utility`` holds the retain and
    control questions, each tagged with its set."""
    items = {**forget, **utility}
    pairs = truth_pairs(items)
    logp = {p: s[0] for p, s in zip(pairs, score(pairs), strict=True)}
    ratios = truth_ratios(items, logp, n_tokens)
    out: dict[str, float | list[float]] = {}
    groups = {"forget": list(forget)}
    for q, it in utility.items():
        groups.setdefault(it.set, []).append(q)
    for name, qs in groups.items():
        if not qs:
            continue
        if name in ("real_authors", "world_facts"):
            probs = [control_prob(logp[(q, items[q].answer)], n_tokens(items[q].answer),
                                  [logp[(q, a)] for a in items[q].perturbed],
                                  [n_tokens(a) for a in items[q].perturbed]) for q in qs]
        else:
            probs = [norm_prob(logp[(q, items[q].answer)], n_tokens(items[q].answer))
                     for q in qs]
        rs = [ratios[q] for q in qs]
        out[f"{name}_prob"] = mean(probs)
        out[f"{name}_rouge"] = mean([rouge_l_recall(items[q].answer, texts[q]) for q in qs])
        out[f"{name}_truth_ratio"] = (forget_truth_stat(rs) if name == "forget"
                                      else retain_truth_stat(rs))
    ks = truth_ratios(forget, logp, n_tokens, ks_truth_ratio)
    out["forget_truth_ratios"] = [ks[q] for q in forget]
    out["model_utility"] = model_utility({k: v for k, v in out.items()
                                          if isinstance(v, float)})
    return out
