"""Update methods behind one typed entry point, chosen by name from :data:`METHODS`.

``METHODS[name](model_dir, pieces, retain, budget, seed, workdir) -> Served``: LOKA, its
ablations, the single-adapter baselines, GRACE, WISE, a GRACE-style LoRA codebook and the untouched
base model.
"""

from __future__ import annotations

from benchmarks.methods.adapter import RECIPES, AdapterServed, fit_adapter
from benchmarks.methods.base import Budget, FitFn, MethodFactory, Served, UpdateStats
from benchmarks.methods.codebook import VARIANTS, LokaServed, budget_config, fit_codebook
from benchmarks.methods.grace import GraceServed, fit_grace
from benchmarks.methods.wise import WiseServed, fit_wise

_DESCRIPTIONS: dict[str, tuple[str, str]] = {
    "loka": ("loka", "LOKA, default config: similarity-aware codebook, conflict-aware "
                     "training, learned gate"),
    "ft_lora": ("baseline", "one LoRA on the joint loss: NLL on edits + NPO on unlearning"),
    "ga": ("baseline", "one LoRA: NLL on edits + gradient ascent on unlearning"),
    "grad_diff": ("baseline", "one LoRA: NLL on edits + gradient ascent + NLL on retain"),
    "npo_kl": ("baseline", "one LoRA: NLL on edits + NPO + KL to the base on retain"),
    "simnpo": ("baseline", "one LoRA: NLL on edits + SimNPO (reference-free, length-normalised "
                           "NPO with a margin) + NLL on retain"),
    "grace": ("baseline", "GRACE (Hartvigsen et al. 2023): key-value codebook at one FFN output, "
                          "value vectors replace it within a deferral radius; NPO values for "
                          "unlearning"),
    "wise": ("baseline", "WISE-style side memory (Wang et al. 2024): a trained copy of one FFN "
                         "down projection, used when its activation score passes a threshold; "
                         "routing margin loss on retain prompts"),
    "lora_codebook": ("baseline", "GRACE-style codebook of LoRA values: one LoRA per piece, "
                                  "nearest key within a deferral radius, no gate, no retain "
                                  "term"),
    "loka_dense": ("ablation", "LOKA with one dense memory for everything"),
    "loka_per_piece": ("ablation", "LOKA with one memory per piece (capacity 1)"),
    "loka_no_router": ("ablation", "LOKA without the gate: every query to its nearest memory"),
    "loka_never_split": ("ablation", "LOKA that never splits (always MGDA multi-task)"),
    "loka_always_split": ("ablation", "LOKA that always splits mixed clusters"),
    "base": ("reference", "the base model, no update"),
}


_FITS: dict[str, FitFn] = {"grace": fit_grace, "wise": fit_wise}


def _factory(name: str) -> MethodFactory:
    family, text = _DESCRIPTIONS[name]
    if name in _FITS:
        fit = _FITS[name]
    else:
        fit = fit_codebook(name) if name in VARIANTS else fit_adapter(name)
    return MethodFactory(name, family, text, fit)


METHODS: dict[str, MethodFactory] = {name: _factory(name) for name in _DESCRIPTIONS}
HEADLINE = ("loka", "ft_lora", "ga", "grad_diff", "npo_kl", "simnpo", "grace", "wise")
ABLATIONS = tuple(n for n, m in METHODS.items() if m.family == "ablation")


def get_method(name: str) -> MethodFactory:
    """The registered method ``name``; ``KeyError`` listing the known names."""
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(METHODS)}") from None


__all__ = ["ABLATIONS", "HEADLINE", "METHODS", "RECIPES", "VARIANTS", "AdapterServed", "Budget",
           "GraceServed", "LokaServed", "MethodFactory", "Served", "UpdateStats",
           "WiseServed", "budget_config", "get_method"]
