"""Evaluation of a served model on one setting (LOKA.md section 4).

``collect`` runs every greedy generation, teacher-forced score and teacher-forced argmax the
metrics need, once per prompt; ``compute_metrics`` turns a method's outputs and the base
model's into the metrics:

- edits (EasyEdit's reliability / generality): teacher-forced token accuracy of the new target
  (the share of target positions whose argmax is the target token, per case, then averaged over
  cases) on the prompt (``edit_rel_acc``) and on its held-out paraphrases (``edit_gen_acc``);
  greedy exact match (``edit_rel_em`` / ``edit_gen_em``), ROUGE-L recall of the target in the
  greedy output (``edit_rouge``) and how far the old answer's log-probability fell
  (``edit_old_logp_drop``, nats; PKU: the unsafe response);
- unlearning: 1 - ROUGE-L recall of the forgotten answer in the greedy output on the prompt
  (``unlearn_eff``) and its paraphrase (``unlearn_gen``); the drop of the answer's
  log-probability against the base (``unlearn_logp_drop``, ``unlearn_gen_logp_drop``, and
  ``unlearn_alt_logp_drop`` for TOFU's paraphrased answers) and of its length-normalised
  probability (``unlearn_prob_drop``: p_base - p_model with p = exp(logp / tokens), in [-1, 1]);
- retain: ROUGE-L recall on D_r (``retain_rouge``) and its ratio to the base's (``retain_ratio``);
- locality on D_g: token agreement of the greedy outputs before and after (``locality``), and
  EasyEdit's locality (``locality_tf``): the share of answer positions of each (prompt, answer)
  where the model's teacher-forced argmax equals the unedited base model's, averaged over pairs.

ROUGE-L is ``rouge-score``'s stemmed rougeL recall, as TOFU reports it
(:mod:`benchmarks.metrics`). Pairs are tokenised as prompt (with special tokens) followed by the
answer (which starts with its space), not EasyEdit's ``prompt + " " + answer`` in one call; for
the BPE tokenizers used here the answer tokens are the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from benchmarks.methods import Served
from benchmarks.metrics import (
    exact_match,
    mean,
    mean_token_prob,
    rouge_l_recall,
    token_agreement,
)
from benchmarks.protocol import Case, Setting

GEN_BATCH = 64
MAX_NEW_TOKENS_CAP = 96


@dataclass
class Outputs:
    """Raw outputs of one model on one setting."""

    texts: dict[str, str] = field(default_factory=dict)  # prompt -> greedy output
    scores: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)
    # locality (prompt, answer) -> teacher-forced argmax at each answer position
    preds: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    routed: dict[str, bool] = field(default_factory=dict)  # codebook methods only


def max_new_tokens(setting: Setting, tokenizer, cases: Sequence[Case] | None = None) -> int:
    """Room for the longest answer of the setting, plus two tokens."""
    cases = setting.cases if cases is None else cases
    texts = [c.target for c in cases] + [c.old_answer or "" for c in cases]
    texts += [a for _, a in setting.retain_eval] + [a for _, a in setting.locality]
    longest = max(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    return min(longest + 2, MAX_NEW_TOKENS_CAP)


def _prompts(setting: Setting, cases: Sequence[Case]) -> list[str]:
    out = [q for c in cases for q in (c.prompt, *c.paraphrases)]
    out += [p for p, _ in setting.retain_eval] + [p for p, _ in setting.locality]
    return list(dict.fromkeys(out))


def _pairs(cases: Sequence[Case]) -> list[tuple[str, str]]:
    out = []
    for c in cases:
        out += [(q, c.target) for q in (c.prompt, *c.paraphrases)]
        if c.old_answer:
            out.append((c.prompt, c.old_answer))
        out += [(c.prompt, a) for a in c.alt_answers]
    return list(dict.fromkeys(out))


def collect(served: Served, setting: Setting, n_tokens: int,
            cases: Sequence[Case] | None = None) -> Outputs:
    """Greedy outputs and teacher-forced scores of ``served`` for everything the metrics use
    (``cases``: the requests to evaluate, by default the setting's)."""
    cases = setting.cases if cases is None else cases
    prompts = sorted(_prompts(setting, cases), key=len)  # similar lengths pad less
    out = Outputs()
    for start in range(0, len(prompts), GEN_BATCH):
        chunk = prompts[start:start + GEN_BATCH]
        out.texts.update(zip(chunk, served.generate(chunk, n_tokens), strict=True))
    pairs = _pairs(cases)
    out.scores = dict(zip(pairs, served.score(pairs), strict=True))
    loc = list(dict.fromkeys(setting.locality))
    out.preds = dict(zip(loc, served.predictions(loc), strict=True))
    routed = getattr(served, "routed", None)
    if routed is not None:
        out.routed = dict(zip(prompts, routed(prompts), strict=True))
    return out


def _drop(base: Outputs, new: Outputs, pairs: list[tuple[str, str]]) -> float:
    return mean([base.scores[p][0] - new.scores[p][0] for p in pairs])


def _prob_drop(base: Outputs, new: Outputs, pairs: list[tuple[str, str]], tokenizer) -> float:
    def prob(o: Outputs, pair: tuple[str, str]) -> float:
        n = len(tokenizer(pair[1], add_special_tokens=False)["input_ids"])
        return mean_token_prob(o.scores[pair][0], n)

    return mean([prob(base, p) - prob(new, p) for p in pairs])


def _per_case(values: list[list[float]]) -> float:
    """Mean over cases of each case's mean (cases without values skipped)."""
    return mean([mean(v) for v in values if v])


def compute_metrics(setting: Setting, out: Outputs, base: Outputs, tokenizer,
                    cases: Sequence[Case] | None = None) -> dict[str, float]:
    """Every metric of the module docstring (NaN where a subset is empty)."""
    cases = setting.cases if cases is None else cases
    edits = [c for c in cases if c.kind == "edit"]
    unlearns = [c for c in cases if c.kind == "unlearn"]
    m: dict[str, float] = {}
    rel = [(c.prompt, c.target) for c in edits]
    gen = [[(q, c.target) for q in c.paraphrases] for c in edits]
    m["edit_rel_acc"] = mean([out.scores[p][1] for p in rel])
    m["edit_gen_acc"] = _per_case([[out.scores[p][1] for p in ps] for ps in gen])
    m["edit_rel_em"] = mean([float(exact_match(t, out.texts[q])) for q, t in rel])
    m["edit_gen_em"] = _per_case([[float(exact_match(t, out.texts[q])) for q, t in ps]
                                  for ps in gen])
    m["edit_rouge"] = mean([rouge_l_recall(t, out.texts[q]) for q, t in rel])
    m["edit_old_logp_drop"] = _drop(base, out, [(c.prompt, c.old_answer) for c in edits
                                                if c.old_answer])
    urel = [(c.prompt, c.target) for c in unlearns]
    ugen = [(q, c.target) for c in unlearns for q in c.paraphrases]
    m["unlearn_eff"] = mean([1 - rouge_l_recall(t, out.texts[q]) for q, t in urel])
    m["unlearn_gen"] = mean([1 - rouge_l_recall(t, out.texts[q]) for q, t in ugen])
    m["unlearn_logp_drop"] = _drop(base, out, urel)
    m["unlearn_prob_drop"] = _prob_drop(base, out, urel, tokenizer)
    m["unlearn_gen_logp_drop"] = _drop(base, out, ugen)
    m["unlearn_alt_logp_drop"] = _drop(base, out, [(c.prompt, a) for c in unlearns
                                                   for a in c.alt_answers])
    retain = [rouge_l_recall(a, out.texts[p]) for p, a in setting.retain_eval]
    base_retain = mean([rouge_l_recall(a, base.texts[p]) for p, a in setting.retain_eval])
    m["retain_rouge"] = mean(retain)
    m["retain_ratio"] = m["retain_rouge"] / base_retain if base_retain > 0 else float("nan")

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    m["locality"] = mean([token_agreement(ids(base.texts[p]), ids(out.texts[p]))
                          for p, _ in setting.locality])
    # EasyEdit: post vs pre argmax on loc_prompt + loc_ans (answers of no tokens skipped)
    m["locality_tf"] = mean([token_agreement(base.preds[p], out.preds[p])
                             for p in setting.locality if base.preds[p]])
    if out.routed:
        m["routed_requests"] = mean([float(out.routed[q]) for c in cases
                                     for q in (c.prompt, *c.paraphrases)])
        m["routed_retain"] = mean([float(out.routed[p]) for p, _ in setting.retain_eval])
        m["routed_locality"] = mean([float(out.routed[p]) for p, _ in setting.locality])
    return m


def base_knowledge(setting: Setting, base: Outputs, cases: Sequence[Case] | None = None
                   ) -> dict[str, float]:
    """How well the base model knows what the setting touches (the ceilings)."""
    cases = setting.cases if cases is None else cases
    unlearns = [c for c in cases if c.kind == "unlearn"]
    edits = [c for c in cases if c.kind == "edit"]
    return {
        "unlearn_answer_rouge": mean([rouge_l_recall(c.target, base.texts[c.prompt])
                                      for c in unlearns]),
        "unlearn_paraphrase_rouge": mean([rouge_l_recall(c.target, base.texts[q])
                                          for c in unlearns for q in c.paraphrases]),
        "edit_old_answer_rouge": mean([rouge_l_recall(c.old_answer, base.texts[c.prompt])
                                       for c in edits if c.old_answer]),
        "edit_target_acc": mean([base.scores[(c.prompt, c.target)][1] for c in edits]),
        "retain_rouge": mean([rouge_l_recall(a, base.texts[p]) for p, a in setting.retain_eval]),
        "locality_answer_rouge": mean([rouge_l_recall(a, base.texts[p])
                                       for p, a in setting.locality]),
    }
