"""Edit, unlearn, locality and conflict handling on the built-in model."""

from __future__ import annotations

from memory_store.models.builtin import FACTS, GENERAL_PROMPTS, find_fact
from memory_store.types import GenerationRequest, PieceKind, PieceSpec


def _gen(loka, prompt: str, memory: str = "auto", n: int = 8):
    return loka.generate([GenerationRequest(prompt, n, memory=memory)])[0]


def test_edit_generates_new_target(edited):
    out = _gen(edited.loka, edited.edit.prompt)
    assert edited.edit.target.strip() in out.text
    assert out.memory_id is not None
    assert _gen(edited.loka, edited.edit.prompt, memory="none").text.strip() != \
        edited.edit.target.strip()


def test_paraphrase_routes_to_the_same_memory(edited):
    prompt_route, para_route = edited.loka.route([edited.edit.prompt, edited.edit.paraphrases[0]])
    assert prompt_route.memory_id is not None
    assert para_route.memory_id == prompt_route.memory_id
    assert edited.edit.target.strip() in _gen(edited.loka, edited.edit.paraphrases[0]).text


def test_unlearned_answer_is_gone(edited):
    answer = edited.unlearn.target.strip()
    assert answer in _gen(edited.loka, edited.unlearn.prompt, memory="none").text
    for prompt in (edited.unlearn.prompt, *edited.unlearn.paraphrases):
        assert answer not in _gen(edited.loka, prompt, n=12).text


def test_unrelated_prompts_are_token_identical_to_base(edited):
    touched = {"Veltoria", "Quellan"}
    prompts = [f.prompts[0] for f in FACTS if f.entity not in touched][::9] + list(
        GENERAL_PROMPTS[:8])
    routed = edited.loka.generate([GenerationRequest(p, 10) for p in prompts])
    base = edited.loka.generate([GenerationRequest(p, 10, memory="none") for p in prompts])
    for p, r, b in zip(prompts, routed, base, strict=True):
        assert r.memory_id is None, p
        assert r.text == b.text, p


def test_same_entity_edit_and_unlearn_records_a_decision(edited):
    loka = edited.loka
    fe, fu = find_fact("Drusmark", "currency"), find_fact("Drusmark", "language")
    target = next(f.answer for f in FACTS if f.relation == "currency" and f.answer != fe.answer)
    result = loka.update([
        PieceSpec(PieceKind.EDIT, fe.prompts[0], " " + target),
        PieceSpec(PieceKind.UNLEARN, fu.prompts[0], " " + fu.answer),
    ])
    assert result.decisions, "a mixed cluster must record its conflict decision"
    for memory_id, decision in result.decisions.items():
        info = loka.memory(memory_id)
        assert info.conflict == decision
        assert decision.decision in ("split", "mgda")
        assert 0.0 <= decision.score <= 1.0
        expected_kind = "mixed" if decision.decision == "mgda" else None
        if expected_kind:
            assert info.kind == expected_kind
    assert target in _gen(loka, fe.prompts[0]).text
    assert fu.answer not in _gen(loka, fu.prompts[0], n=12).text
