"""Bad inputs raise clear errors that name the field."""

from __future__ import annotations

import json

import pytest

from memory_store import Loka
from memory_store.errors import InvalidInput, ModelMismatch, NotFound
from memory_store.pieces_io import read_update_file
from memory_store.types import GenerationRequest, PieceKind, PieceSpec


@pytest.fixture(scope="module")
def loka(default_model, tmp_path_factory) -> Loka:
    return Loka.open(tmp_path_factory.mktemp("inputs"), default_model)


@pytest.mark.parametrize(("piece", "field"), [
    (PieceSpec(PieceKind.EDIT, "", " x"), "pieces[0].prompt"),
    (PieceSpec(PieceKind.EDIT, "   ", " x"), "pieces[0].prompt"),
    (PieceSpec(PieceKind.EDIT, "The capital of Veltoria is", ""), "pieces[0].target"),
    (PieceSpec(PieceKind.UNLEARN, "The capital of Veltoria is", " x", ("",)),
     "pieces[0].paraphrases[0]"),
])
def test_bad_pieces(loka, piece, field):
    with pytest.raises(InvalidInput) as err:
        loka.update([piece])
    assert err.value.field == field
    assert loka.version == 0  # nothing published


LONG = "word " * 200  # ~600 tokens of the built-in model, which attends to 128


@pytest.mark.parametrize(("piece", "field"), [
    (PieceSpec(PieceKind.EDIT, LONG, " x"), "pieces[0].prompt"),
    (PieceSpec(PieceKind.EDIT, "The capital of Veltoria is", " " + LONG), "pieces[0].target"),
    (PieceSpec(PieceKind.UNLEARN, "The capital of Veltoria is", " x", ("ok", LONG)),
     "pieces[0].paraphrases[1]"),
    # unlearning trains on what the model generates after the prompt too (16 tokens): a piece
    # that fits as an edit does not fit as an unlearning request
    (PieceSpec(PieceKind.UNLEARN, "word " * 38, " x"), "pieces[0].prompt"),
])
def test_pieces_beyond_the_context(loka, piece, field):
    """Used to pass validation and then fail inside training with an IndexError."""
    assert loka.context_length == 128
    with pytest.raises(InvalidInput) as err:
        loka.validate_pieces([piece])
    assert err.value.field == field and "128" in err.value.message
    with pytest.raises(InvalidInput):
        loka.update([piece])
    assert loka.version == 0


def test_pieces_that_fit_the_context(loka):
    loka.validate_pieces([PieceSpec(PieceKind.EDIT, "word " * 38, " x")])


def test_empty_update(loka):
    with pytest.raises(InvalidInput):
        loka.update([])


def test_unknown_memory_id(loka):
    for memory in ("mem_999999", "../../etc/passwd", "mem_1"):
        with pytest.raises(NotFound) as err:
            loka.generate([GenerationRequest("hello", 4, memory=memory)])
        assert err.value.field == "memory"
    with pytest.raises(NotFound):
        loka.memory("mem_000042")
    with pytest.raises(NotFound):
        loka.delete_piece("pc_../x")


def test_empty_prompt_in_generation(loka):
    with pytest.raises(InvalidInput):
        loka.generate([GenerationRequest("", 4)])


def test_malformed_jsonl(tmp_path):
    cases = {
        "not json\n": ("line", ":1:"),
        json.dumps({"kind": "edit", "prompt": "p"}) + "\n": ("target", ":1:"),
        "\n" + json.dumps({"kind": "forget", "prompt": "p", "target": "t"}): ("kind", ":2:"),
        json.dumps({"kind": "edit", "prompt": "p", "target": "t", "extra": 1}): ("extra", ":1:"),
        json.dumps({"kind": "edit", "prompt": "p", "target": ""}): (None, ":1:"),
        json.dumps({"kind": "retain", "prompt": "p"}): ("file", "no edit"),
    }
    for i, (text, (field, where)) in enumerate(cases.items()):
        path = tmp_path / f"u{i}.jsonl"
        path.write_text(text)
        with pytest.raises(InvalidInput) as err:
            read_update_file(path)
        assert where in err.value.message
        if field:
            assert err.value.field == field


def test_store_refuses_another_model(loka, tmp_path):
    from memory_store.models.tiny import build_tiny_model

    tiny = build_tiny_model("gpt2", tmp_path / "tiny")
    with pytest.raises(ModelMismatch):
        Loka.open(loka.store_path, tiny)
