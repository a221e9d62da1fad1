"""TOFU's forget quality and model utility of every fit of a TOFU suite
(:mod:`benchmarks.tofu_metrics`), through the served model's own scoring and generation hooks.

The retain-only reference model of each forget split (never trained on the forget authors) is
prepared with :func:`benchmarks.prepare.ensure_reference_model`; on a given model directory
(``--model``) it is the directory that its ``loka_bench_model.json`` names for the split's
forget authors (``retain_models``, written by ``python -m benchmarks prepare --suite tofu
--model ...``: :mod:`benchmarks.finetune`), and forget quality is NaN without one."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from benchmarks.evaluate import GEN_BATCH, Outputs
from benchmarks.methods import Budget, Served, get_method
from benchmarks.metrics import mean, rouge_l_recall
from benchmarks.prepare import INFO_FILE, ensure_reference_model, read_info
from benchmarks.protocol import Pair, Setting, Suite
from benchmarks.tofu_metrics import TofuSets, TruthItem, forget_quality, tofu_scores

logger = logging.getLogger(__name__)


def _generate(served: Served, prompts: list[str], n_tokens: int) -> dict[str, str]:
    prompts = sorted(dict.fromkeys(prompts), key=len)
    out: dict[str, str] = {}
    for start in range(0, len(prompts), GEN_BATCH):
        chunk = prompts[start:start + GEN_BATCH]
        out.update(zip(chunk, served.generate(chunk, n_tokens), strict=True))
    return out


def train_rouge(served: Served, pairs: tuple[Pair, ...], n_tokens: int) -> float:
    """Mean ROUGE-L recall of a model's greedy answers to its training QA (its accuracy)."""
    texts = _generate(served, [p for p, _ in pairs], n_tokens)
    return mean([rouge_l_recall(a, texts[p]) for p, a in pairs])


class TofuEvaluator:
    """Reference scores per setting (cached) and the TOFU metrics of each fit."""

    def __init__(self, suite: Suite, model_dir: Path, given_model: bool, budget: Budget,
                 workroot: Path, tokenizer, cache_dir: Path | None = None) -> None:
        assert suite.tofu is not None
        self.suite = suite
        self.sets: TofuSets = suite.tofu
        self.model_dir = model_dir
        self.given_model = given_model
        self.budget = budget
        self.workroot = workroot
        self.tokenizer = tokenizer
        self.cache_dir = cache_dir
        self.reference: dict[str, dict[str, Any]] = {}  # setting key -> reference scores
        self.references: dict[str, Path | None] = {}  # split -> reference model

    def n_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _items(self, setting: Setting) -> tuple[dict[str, TruthItem], dict[str, TruthItem]]:
        return (self.sets.forget_items([c.prompt for c in setting.unlearns]),
                self.sets.utility_items([p for p, _ in setting.retain_eval],
                                        [p for p, _ in setting.locality]))

    def reference_model(self, split: str) -> Path | None:
        if split not in self.references:
            if self.given_model:
                key = ",".join(map(str, self.sets.splits[split]))
                ref = read_info(self.model_dir).get("retain_models", {}).get(key)
                path = Path(ref) if ref else None
                if path is None or not (path / INFO_FILE).is_file():
                    logger.warning("%s has no retain-only %s model: forget quality is NaN",
                                   self.model_dir, split)
                    path = None
            else:
                path = ensure_reference_model(self.suite, split, self.cache_dir)
            self.references[split] = path
        return self.references[split]

    def scores(self, served: Served, setting: Setting, texts: dict[str, str] | None,
               n_gen: int) -> dict[str, Any]:
        forget, utility = self._items(setting)
        if texts is None:
            texts = _generate(served, [*forget, *utility], n_gen)
        return tofu_scores(served.score, texts, self.n_tokens, forget, utility)

    def reference_scores(self, setting: Setting, n_gen: int) -> dict[str, Any] | None:
        if setting.key not in self.reference:
            path = self.reference_model(self.sets.setting_split[setting.name])
            if path is None:
                return None
            served = get_method("base")(path, [], (), self.budget, 0, self.workroot)
            try:
                self.reference[setting.key] = self.scores(served, setting, None, n_gen)
            finally:
                served.close()
        return self.reference[setting.key]

    def metrics(self, setting: Setting, served: Served, out: Outputs, n_gen: int
                ) -> dict[str, float]:
        """``forget_quality``, ``model_utility`` and the numbers behind them, for one fit."""
        own = self.scores(served, setting, out.texts, n_gen)
        ref = self.reference_scores(setting, n_gen)
        fq = (forget_quality(own["forget_truth_ratios"], ref["forget_truth_ratios"])
              if ref is not None else float("nan"))
        return {"forget_quality": fq, **{k: v for k, v in own.items()
                                         if k != "forget_truth_ratios"}}

    def summary(self, n_gen: int) -> dict[str, Any]:
        """The base and reference models' accuracy on their training QA (ROUGE-L), the forget
        splits, and the reference models' own TOFU numbers per setting."""
        models: dict[str, Any] = {}
        served = get_method("base")(self.model_dir, [], (), self.budget, 0, self.workroot)
        try:
            models["base"] = {"path": str(self.model_dir), "train_rouge": train_rouge(
                served, self.suite.corpus.canonical, n_gen)}
        finally:
            served.close()
        for split, corpus in self.sets.retain_corpora.items():
            path = self.reference_model(split)
            if path is None:
                continue
            served = get_method("base")(path, [], (), self.budget, 0, self.workroot)
            try:
                models[f"retain_{split}"] = {
                    "path": str(path), "forget_authors": list(self.sets.splits[split]),
                    "train_rouge": train_rouge(served, corpus.canonical, n_gen),
                    "knowledge": read_info(path).get("knowledge", {})}
            finally:
                served.close()
        return {"splits": {k: list(v) for k, v in self.sets.splits.items()},
                "models": models,
                "reference": {k: {m: v for m, v in s.items() if m != "forget_truth_ratios"}
                              for k, s in self.reference.items()}}
