"""The conflict histogram (the paper's Figure 1): cosine between the edit and the unlearn
gradient of a LoRA memory, for (edit, unlearn) piece pairs about the same author (in-profile)
and about different authors (out-profile), with two-sample tests of the difference.

Gradients are taken as LOKA's conflict score takes them (``memory_store.update.conflict``: NLL
on the edit target, NPO on the forgotten answer, after ``warmup_steps`` joint steps on a
throwaway copy of a fresh adapter), one piece per side. Each setting's pieces are warmed up
together, as one memory. A trajectory gives the mean cosine after 0, 1, 2, 5 and 10 warm-up
steps (0: the fresh adapter, where B = 0 and only the B half of the gradient is non-zero).

    python -m benchmarks conflict [--model tiny|smollm2|DIR] [--out DIR]
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.methods import Budget
from benchmarks.methods.codebook import budget_config
from benchmarks.metrics import mean
from benchmarks.protocol import Case, Setting
from benchmarks.stats import compare
from memory_store.config import ConflictSettings, KeySettings, LoraSettings, TrainerSettings
from memory_store.lora.layer import TrainState, inject, use_state
from memory_store.lora.weights import init_adapter
from memory_store.models.access import describe, load_model
from memory_store.update import conflict as engine
from memory_store.update.trainer import MemoryTask, autocast_for, make_objective

logger = logging.getLogger(__name__)

TRAJECTORY_STEPS = (0, 1, 2, 5, 10)
LABELS = ("in_profile", "out_profile")


def cosines_by_step(model, tokenizer, layout, edits: Sequence[Case], unlearns: Sequence[Case],
                    pairs: Sequence[tuple[int, int]], trainer: TrainerSettings,
                    lora: LoraSettings, steps: Sequence[int], seed: int,
                    device: str = "cpu") -> dict[int, list[float]]:
    """For each warm-up step count in ``steps``: the cosine of (edit ``i``, unlearn ``j``)
    gradients for each pair ``(i, j)``. One warm-up continues through the step counts (the
    engine's ``warm_up``, Adam state kept)."""
    npo = engine.npo_settings(trainer)
    task = MemoryTask(edits=[(c.prompt, c.target) for c in edits],
                      unlearns=[(c.prompt, c.target) for c in unlearns])
    objective = make_objective(model, tokenizer, layout, task, npo)
    state = TrainState(init_adapter(layout, lora.rank, lora.alpha, seed), device)
    out: dict[int, list[float]] = {}
    opt, done = None, 0
    with autocast_for(model, npo), use_state(state):
        for step in sorted(set(steps)):
            opt = engine.warm_up(objective, state, npo, step - done, opt)
            done = step
            g_e = {i: engine.edit_grad(objective, state, torch.tensor([i]))
                   for i in sorted({i for i, _ in pairs})}
            g_u = {j: engine.unlearn_grad(objective, state, torch.tensor([j]))
                   for j in sorted({j for _, j in pairs})}
            out[step] = [engine.cosine(g_e[i], g_u[j]) for i, j in pairs]
    return out


def _pairs(setting: Setting, same: bool) -> list[tuple[int, int]]:
    return [(i, j) for i, e in enumerate(setting.edits) for j, u in enumerate(setting.unlearns)
            if (e.group == u.group) == same]


def _summary(cos: Sequence[float]) -> dict[str, Any]:
    return {"cosines": [round(c, 5) for c in cos], "n": len(cos), "mean": mean(list(cos)),
            "share_nonpositive": mean([float(c <= 0) for c in cos])}


def conflict_histogram(model_dir: Path, in_profile: Setting, out_profile: Setting,
                       budget: Budget, seed: int = 0,
                       warmup_steps: int | None = None) -> dict[str, Any]:
    """Same-author (edit, unlearn) pairs of ``in_profile`` and different-author pairs of
    ``out_profile`` (the unlearn pieces are the same in both): their cosines after the
    engine's warm-up (``warmup_steps``, default ``ConflictSettings().warmup_steps``), the tests
    of in- against out-profile, and the trajectory of the means over warm-up steps."""
    warmup = ConflictSettings().warmup_steps if warmup_steps is None else warmup_steps
    trainer = budget_config(budget, seed).trainer
    lora = LoraSettings(rank=budget.rank, alpha=budget.alpha)
    model, tokenizer = load_model(model_dir, device=budget.device)
    layout = describe(model, lora, KeySettings())
    inject(model, layout)
    steps = sorted({*TRAJECTORY_STEPS, warmup})
    result: dict[str, Any] = {"seed": seed, "warmup_steps": warmup,
                              "learning_rate": trainer.learning_rate}
    by_step: dict[str, dict[int, list[float]]] = {}
    for label, setting in zip(LABELS, (in_profile, out_profile), strict=True):
        pairs = _pairs(setting, same=label == "in_profile")
        by_step[label] = cosines_by_step(model, tokenizer, layout, setting.edits,
                                         setting.unlearns, pairs, trainer, lora, steps, seed,
                                         budget.device)
        result[label] = _summary(by_step[label][warmup])
    result["stats"] = compare(by_step["in_profile"][warmup], by_step["out_profile"][warmup],
                              seed)
    result["trajectory"] = [
        {"warmup_steps": s, **{label: {"mean": mean(by_step[label][s]),
                                        "share_nonpositive": mean(
                                            [float(c <= 0) for c in by_step[label][s]])}
                               for label in LABELS}}
        for s in steps]
    return result


def write_conflict(result: dict[str, Any], out: Path, name: str = "tofu") -> list[Path]:
    """``conflict.json``, ``conflict.md`` and the histogram ``conflict_<name>.png``."""
    from benchmarks.plots import conflict_plot
    from benchmarks.report import conflict_section
    from benchmarks.runner import write_json

    out.mkdir(parents=True, exist_ok=True)
    written = [out / "conflict.json", out / "conflict.md"]
    write_json(result, written[0])
    meta = result.get("meta", {})
    head = (f"# Edit/unlearn gradient conflict ({name})\n\n"
            f"Model `{meta.get('model', '?')}`; command `{meta.get('command', '')}`; "
            f"{meta.get('seconds', float('nan')):.0f} s.\n\n")
    written[1].write_text(head + conflict_section(result) + "\n")
    try:
        conflict_plot(name, result, out / f"conflict_{name}.png")
        written.append(out / f"conflict_{name}.png")
    except ImportError:
        logger.warning("matplotlib is not installed: no histogram")
    return written


def seed_row(result: dict[str, Any]) -> dict[str, Any]:
    """One seed's line of the per-seed table: means, shares <= 0, p-values, trajectory."""
    st = result["stats"]
    return {"seed": result["seed"],
            **{f"{k}_{label}": result[label][k] for label in LABELS
               for k in ("mean", "share_nonpositive")},
            "mean_difference": st["permutation"]["statistic"],
            "ks_p": st["ks"]["p_value"], "mann_whitney_p": st["mann_whitney"]["p_value"],
            "permutation_p": st["permutation"]["p_value"],
            "trajectory": {t["warmup_steps"]: [t[label]["mean"] for label in LABELS]
                           for t in result["trajectory"]}}


def run_conflict(model: Path | None, out: Path, data_dir: Path, cache_dir: Path | None = None,
                 seeds: Sequence[int] = (0,), command: str = "") -> dict[str, Any]:
    """The TOFU conflict analysis on ``model`` (None: the prepared small-scale TOFU base
    model), once per seed (adapter initialisation); the first seed's histogram, tests and
    trajectory in full, every seed's summary in ``per_seed``. Writes it under ``out``."""
    from benchmarks.runner import BUDGETS, RunConfig, _build, _model_dir

    scale = "small" if model is None else "cpu"
    cfg = RunConfig(suites=["tofu"], scale=scale, data_dir=data_dir, out=out, methods=[],
                    seeds=list(seeds), analyses={"conflict"}, model=model, cache_dir=cache_dir)
    started = time.perf_counter()
    suite = _build(cfg, "tofu")
    model_dir, info, _ = _model_dir(cfg, suite)
    a, b = suite.conflict_pair or LABELS
    runs = [conflict_histogram(model_dir, suite.setting(a), suite.setting(b), BUDGETS[scale],
                               seed) for seed in seeds]
    result = {**runs[0], "per_seed": [seed_row(r) for r in runs]}
    result["meta"] = {"model": str(model_dir), "scale": scale, "command": command,
                      "seconds": round(time.perf_counter() - started, 1),
                      "model_info": {k: v for k, v in info.items() if k != "path"}}
    write_conflict(result, out)
    for r in result["per_seed"]:
        logger.info("conflict seed %d: in-profile mean %.3f, out-profile mean %.3f; KS p %.3g, "
                    "Mann-Whitney p %.3g, permutation p %.3g", r["seed"],
                    r["mean_in_profile"], r["mean_out_profile"], r["ks_p"],
                    r["mann_whitney_p"], r["permutation_p"])
    return result
