"""The conflict score: gradients after a warm-up on a throwaway adapter copy, half-size
mini-batches (enumerated when few), decisions stored with their cosines."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import torch

from memory_store import Loka
from memory_store.codebook.db import DB_NAME
from memory_store.config import ConflictSettings, KeySettings, LoraSettings, TrainerSettings
from memory_store.lora.layer import TrainState, inject, use_state
from memory_store.lora.weights import init_adapter
from memory_store.models.access import describe, load_model
from memory_store.models.builtin import FACTS, counterfactual_answer, find_fact
from memory_store.types import ConflictDecision, PieceKind, PieceSpec
from memory_store.update import conflict
from memory_store.update.trainer import MemoryTask, grad_of, make_objective

LORA = LoraSettings()
TRAINER = TrainerSettings()


@pytest.fixture(scope="module")
def model(default_model: Path):
    m, tok = load_model(default_model)
    layout = describe(m, LORA, KeySettings())
    inject(m, layout)
    return m, tok, layout


def _task() -> MemoryTask:
    """Two counterfactual edits and two unlearning requests, each with a paraphrase."""
    task = MemoryTask()
    for entity, relation in (("Veltoria", "capital"), ("Drusmark", "currency")):
        f = find_fact(entity, relation)
        task.edits += [(p, " " + counterfactual_answer(f)) for p in f.prompts[:2]]
    for entity, relation in (("Quellan", "sport"), ("Drusmark", "language")):
        f = find_fact(entity, relation)
        task.unlearns += [(p, " " + f.answer) for p in f.prompts[:2]]
    return task


def _a_grad_norm(objective, state: TrainState) -> float:
    g = grad_of(objective.edit_loss()[0], [state.a[k] for k in sorted(state.a)])
    return float(g.norm())


def test_half_batches_enumerated_when_few():
    gen = torch.Generator().manual_seed(0)
    pairs = conflict.batch_pairs(2, 2, 4, 8, gen)  # 2 x 2 single-row combinations
    assert sorted((int(e), int(u)) for e, u in pairs) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    pairs = conflict.batch_pairs(4, 4, 4, 8, gen)  # 6 x 6 > 8: distinct draws of two rows
    keys = {(tuple(e.tolist()), tuple(u.tolist())) for e, u in pairs}
    assert len(pairs) == len(keys) == 8
    assert all(len(e) == 2 and len(u) == 2 for e, u in pairs)
    pairs = conflict.batch_pairs(40, 40, 4, 8, gen)  # too many to enumerate: random draws
    assert len(pairs) == 8 and all(len(e) == 4 for e, _ in pairs)


def test_warm_up_makes_gradients_non_degenerate(model):
    m, tok, layout = model
    objective = make_objective(m, tok, layout, _task(), conflict.npo_settings(TRAINER))
    state = TrainState(init_adapter(layout, LORA.rank, LORA.alpha, 0), "cpu")
    with use_state(state):
        assert _a_grad_norm(objective, state) == 0.0  # B = 0: the A half is dead
        conflict.warm_up(objective, state, TRAINER, 3)
        assert _a_grad_norm(objective, state) > 0.0
    cos = conflict.conflict_cosines(m, tok, layout, _task(), TRAINER, LORA,
                                    ConflictSettings(samples=8), 0)
    assert len(cos) == 8
    assert torch.tensor(cos).var() > 1e-6, cos
    assert all(-1.0 <= c <= 1.0 for c in cos)


def test_no_warm_up_is_the_old_fresh_adapter_score(model):
    m, tok, layout = model
    settings = ConflictSettings(samples=6, warmup_steps=0)
    cos = conflict.conflict_cosines(m, tok, layout, _task(), TRAINER, LORA, settings, 3)
    # the old computation: gradients on the freshly initialised adapter, same mini-batches
    npo = conflict.npo_settings(TRAINER)
    objective = make_objective(m, tok, layout, _task(), npo)
    pairs = conflict.batch_pairs(len(objective.edit), len(objective.unlearn),
                                 settings.batch_size, settings.samples,
                                 torch.Generator().manual_seed(3))
    state = TrainState(init_adapter(layout, LORA.rank, LORA.alpha, 3), "cpu")
    params = state.parameters()
    with use_state(state):
        old = [conflict.cosine(grad_of(objective.edit_loss(e)[0], params),
                               grad_of(objective.unlearn_loss(u)[0], params)) for e, u in pairs]
    assert cos == pytest.approx(old, abs=1e-5)


def test_scoring_changes_no_weights(model):
    m, tok, layout = model
    adapter = init_adapter(layout, LORA.rank, LORA.alpha, 1)
    adapter.b = {k: torch.randn_like(v) * 0.01 for k, v in adapter.b.items()}  # a trained one
    before = {k: v.clone() for k, v in (*adapter.a.items(), *[("b" + k, v) for k, v in
                                                             adapter.b.items()])}
    base = {n: p.detach().clone() for n, p in m.named_parameters()}
    decision = conflict.decide(m, tok, layout, _task(), TRAINER, LORA,
                               ConflictSettings(samples=4), adapter)
    assert decision.warmup_steps == 5 and len(decision.cosines) == decision.samples == 4
    after = {k: v for k, v in (*adapter.a.items(), *[("b" + k, v) for k, v in
                                                     adapter.b.items()])}
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(base[n], p) for n, p in m.named_parameters())


def test_decision_is_json_and_old_rows_load():
    d = ConflictDecision(0.25, 0.5, "mgda", 4, 0.1, 5, [0.3, -0.1, 0.2, 0.0])
    back = ConflictDecision(**json.loads(json.dumps(d.__dict__)))
    assert back == d and back.cosines == (0.3, -0.1, 0.2, 0.0)
    old = ConflictDecision(**{"score": 1.0, "tau": 0.5, "decision": "split", "samples": 8,
                              "mean_cosine": -0.2})
    assert old.warmup_steps == 0 and old.cosines == ()


def test_decisions_persist_with_new_fields(default_model: Path, tmp_path: Path):
    store = tmp_path / "store"
    loka = Loka.open(store, default_model)
    fe, fu = find_fact("Drusmark", "currency"), find_fact("Drusmark", "language")
    target = next(f.answer for f in FACTS if f.relation == "currency" and f.answer != fe.answer)
    result = loka.update([PieceSpec(PieceKind.EDIT, fe.prompts[0], " " + target),
                          PieceSpec(PieceKind.UNLEARN, fu.prompts[0], " " + fu.answer)])
    assert result.decisions
    mid, decision = next(iter(result.decisions.items()))
    assert decision.warmup_steps == ConflictSettings().warmup_steps
    assert len(decision.cosines) == decision.samples > 0
    loka.close()
    # a row written before warmup_steps/cosines existed
    db = sqlite3.connect(store / DB_NAME)
    old = {k: v for k, v in decision.__dict__.items() if k not in ("warmup_steps", "cosines")}
    db.execute("UPDATE memories SET conflict = ? WHERE id = ?", (json.dumps(old), mid))
    db.commit()
    db.close()
    reopened = Loka.open(store, default_model)
    try:
        info = reopened.memory(mid)
        assert info.conflict is not None
        assert info.conflict.warmup_steps == 0 and info.conflict.cosines == ()
        assert info.conflict.score == decision.score
        others = [reopened.memory(m).conflict for m in result.decisions if m != mid]
        assert all(c == result.decisions[m] for m, c in zip(
            [m for m in result.decisions if m != mid], others, strict=True))
    finally:
        reopened.close()


def test_api_and_client_show_the_new_fields():
    from loka_client.models import ConflictDecision as ClientDecision

    from service.schemas import ConflictOut

    d = ConflictDecision(0.5, 0.5, "split", 2, -0.05, 5, (0.2, -0.3))
    out = ConflictOut.of(d)
    assert out.warmup_steps == 5 and out.cosines == [0.2, -0.3]
    client = ClientDecision.model_validate(out.model_dump(mode="json"))
    assert client.warmup_steps == 5 and client.cosines == [0.2, -0.3]
    old = ClientDecision.model_validate({"score": 1.0, "tau": 0.5, "decision": "split"})
    assert old.warmup_steps is None and old.cosines == []
