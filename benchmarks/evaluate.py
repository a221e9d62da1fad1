"""Evaluation of a served model on one setting (LOKA.md section 4).

``collect`` runs every greedy generation and teacher-forced score the metrics need, once per
prompt; ``compute_metrics`` turns a method's outputs and the base model's into the metrics:

- edits: token accuracy of the new target on the prompt (``edit_rel_acc``) and on its held-out
  paraphrase (``edit_gen_acc``), greedy exact match (``edit_rel_em`` / ``edit_gen_em``), ROUGE-L
  recall of the target in the greedy output (``edit_rouge``) and how far the old answer's
  log-probability fell (``edit_old_logp_drop``, nats; PKU: the unsafe response);
- unlearning: 1 - ROUGE-L recall of the forgotten answer in the greedy output on the prompt
  (``unlearn_eff``) and its paraphrase (``unlearn_gen``), and the drop of the answer's
  log-probability against the base (``unlearn_logp_drop``, ``unlearn_gen_logp_drop``, and
  ``unlearn_alt_logp_drop`` for TOFU's paraphrased answers);
- retain: ROUGE-L recall on D_r (``retain_rouge``) and its ratio to the base's (``retain_ratio``);
- locality: token agreement of greedy outputs on D_g before and after (``locality``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from benchmarks.methods import Served
from benchmarks.metrics import exact_match, mean, rouge_l_recall, token_agreement
from benchmarks.protocol import Case, Setting

GEN_BATCH = 64
MAX_NEW_TOKENS_CAP = 96


@dataclass
class Outputs:
    """Raw outputs of one model on one setting."""

    texts: dict[str, str] = field(default_factory=dict)  # prompt -> greedy output
    scores: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)
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
    routed = getattr(served, "routed", None)
    if routed is not None:
        out.routed = dict(zip(prompts, routed(prompts), strict=True))
    return out


def _drop(base: Outputs, new: Outputs, pairs: list[tuple[str, str]]) -> float:
    return mean([base.scores[p][0] - new.scores[p][0] for p in pairs])


def compute_metrics(setting: Setting, out: Outputs, base: Outputs, tokenizer,
                    cases: Sequence[Case] | None = None) -> dict[str, float]:
    """Every metric of the module docstring (NaN where a subset is empty)."""
    cases = setting.cases if cases is None else cases
    edits = [c for c in cases if c.kind == "edit"]
    unlearns = [c for c in cases if c.kind == "unlearn"]
    m: dict[str, float] = {}
    rel = [(c.prompt, c.target) for c in edits]
    gen = [(q, c.target) for c in edits for q in c.paraphrases]
    m["edit_rel_acc"] = mean([out.scores[p][1] for p in rel])
    m["edit_gen_acc"] = mean([out.scores[p][1] for p in gen])
    m["edit_rel_em"] = mean([float(exact_match(t, out.texts[q])) for q, t in rel])
    m["edit_gen_em"] = mean([float(exact_match(t, out.texts[q])) for q, t in gen])
    m["edit_rouge"] = mean([rouge_l_recall(t, out.texts[q]) for q, t in rel])
    m["edit_old_logp_drop"] = _drop(base, out, [(c.prompt, c.old_answer) for c in edits
                                                if c.old_answer])
    urel = [(c.prompt, c.target) for c in unlearns]
    ugen = [(q, c.target) for c in unlearns for q in c.paraphrases]
    m["unlearn_eff"] = mean([1 - rouge_l_recall(t, out.texts[q]) for q, t in urel])
    m["unlearn_gen"] = mean([1 - rouge_l_recall(t, out.texts[q]) for q, t in ugen])
    m["unlearn_logp_drop"] = _drop(base, out, urel)
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
