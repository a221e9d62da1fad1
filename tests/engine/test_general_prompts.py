"""The shipped general prompt set and the update's hard negatives."""

from __future__ import annotations

import json

import pytest

from memory_store.errors import InvalidInput
from memory_store.general_prompts import (
    OTHER_SUBJECTS,
    general_prompts,
    guess_subject,
    load_user_prompts,
    render,
    subject_negatives,
    swapped_negatives,
)


def test_shipped_set_is_large_diverse_and_split():
    train, held = general_prompts("train"), general_prompts("heldout")
    assert len(train) >= 2500 and len(held) >= 150
    assert {p.form for p in train} == {"completion", "question", "chat"}
    assert len({p.domain for p in train}) >= 12
    assert not {p.prompt for p in train} & {p.prompt for p in held}


def test_heldout_shares_no_subject_with_train():
    """The held-out split measures the gate: none of its subjects appear in a train prompt."""
    from scripts.make_general_prompts import HELDOUT

    train_text = "\n".join(p.prompt for p in general_prompts("train")).lower()
    for subjects, _ in HELDOUT.values():
        for subject in subjects:
            assert f" {subject.lower()}" not in train_text, subject


def test_swapped_subjects_are_not_heldout_subjects():
    from scripts.make_general_prompts import HELDOUT

    held = {s.lower() for subjects, _ in HELDOUT.values() for s in subjects}
    assert not held & {s.lower() for s in OTHER_SUBJECTS}
    negs = swapped_negatives("The mother tongue of Danielle Darrieux is", "Danielle Darrieux")
    assert len(negs) == 4 and all("Danielle Darrieux" not in n for n in negs)
    assert swapped_negatives("no subject here", "Danielle Darrieux") == []


def test_render_uses_chat_template_only_for_chat_prompts():
    prompts = general_prompts("train")[:50]
    out = render(prompts, chat=lambda s: f"<user>{s}<assistant>")
    for p, text in zip(prompts, out, strict=True):
        assert text.startswith("<user>") == (p.form == "chat")


def test_user_prompts_file(tmp_path):
    good = tmp_path / "bg.jsonl"
    good.write_text(json.dumps({"prompt": "Our product ships in"}) + "\n\n")
    assert load_user_prompts(good) == ["Our product ships in"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n')
    with pytest.raises(InvalidInput, match="bad.jsonl:2"):
        load_user_prompts(bad)
    with pytest.raises(InvalidInput, match="cannot read"):
        load_user_prompts(tmp_path / "missing.jsonl")


@pytest.mark.parametrize(("prompt", "subject"), [
    ("The mother tongue of Danielle Darrieux is", "Danielle Darrieux"),
    ("Q: What is the capital of France?\nA:", "France"),
    ("What sport does Michael Jordan play?", "Michael Jordan"),
    ("the weather is nice", None),
])
def test_guess_subject(prompt, subject):
    assert guess_subject(prompt) == subject


def test_subject_negatives_exclude_the_piece_itself():
    negs = subject_negatives("Danielle Darrieux", exclude=["Danielle Darrieux  was born in"])
    assert "Danielle Darrieux died in" in negs
    assert "Danielle Darrieux was born in" not in negs
