"""Sequential updates, persistence, crash safety, deletion, rollback and mixed batches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from memory_store import Loka
from memory_store.models.builtin import counterfactual_answer, find_fact
from memory_store.types import GenerationRequest, PieceKind, PieceSpec

PROBES = ("The capital of Veltoria is", "The national sport of Quellan is",
          "The capital of Orlenia is", "Snow is cold and")

_SCRIPT = """
import json, sys
from memory_store import Loka
from memory_store.types import GenerationRequest
loka = Loka.open(sys.argv[1], sys.argv[2])
if len(sys.argv) > 3:
    from memory_store.types import PieceKind, PieceSpec
    loka.update([PieceSpec(PieceKind.EDIT, sys.argv[3], " Hollisk")])
out = loka.generate([GenerationRequest(p, 8) for p in json.loads(sys.stdin.read())])
sys.stdout.write(json.dumps([[o.text, o.memory_id, o.codebook_version] for o in out]))
"""


def _run(store: Path, model: Path, *extra: str, env: dict | None = None):
    return subprocess.run([sys.executable, "-c", _SCRIPT, str(store), str(model), *extra],
                          input=json.dumps(PROBES), capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


def _outputs(loka: Loka) -> list[list]:
    out = loka.generate([GenerationRequest(p, 8) for p in PROBES])
    return [[o.text, o.memory_id, o.codebook_version] for o in out]


def test_reopen_in_a_new_process_gives_identical_outputs(edited, default_model):
    proc = _run(edited.store, default_model)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == _outputs(edited.loka)


def test_crash_before_publish_leaves_previous_version(edited, default_model):
    before = _outputs(edited.loka)
    version = edited.loka.version
    proc = _run(edited.store, default_model, "The capital of Orlenia is",
                env={"LOKA_FAULT": "before_commit"})
    assert proc.returncode == 70, proc.stderr  # the process died inside the publish
    reopened = Loka.open(edited.store, default_model)
    assert reopened.version == version
    assert _outputs(reopened) == before
    reopened.close()


def test_sequential_update_keeps_untouched_memories_bit_for_bit(edited):
    loka = edited.loka
    before = {m.id: m for m in loka.memories()}
    files = {m.id: (edited.store / "adapters" / m.id / m.content_hash /
                    "adapter_model.safetensors").read_bytes() for m in before.values()}
    fact = find_fact("Norhaven", "river")
    result = loka.update([PieceSpec(PieceKind.EDIT, fact.prompts[0],
                                    " " + counterfactual_answer(fact))])
    after = {m.id: m for m in loka.memories()}
    untouched = set(before) - set(result.memories_updated) - set(result.memories_removed)
    assert untouched, "the new piece should not touch every memory"
    for mid in untouched:
        assert after[mid].content_hash == before[mid].content_hash
        path = edited.store / "adapters" / mid / after[mid].content_hash
        assert (path / "adapter_model.safetensors").read_bytes() == files[mid]


def test_delete_piece_reverts_and_rollback_restores(edited):
    loka = edited.loka
    edit_piece = next(p for p in loka.pieces() if p.prompt == edited.edit.prompt)
    target = edited.edit.target.strip()
    base = loka.generate([GenerationRequest(edited.edit.prompt, 8, memory="none")])[0].text
    version_with_edit = loka.version
    result = loka.delete_piece(edit_piece.id)
    assert edit_piece.id in result.pieces_removed
    reverted = loka.generate([GenerationRequest(edited.edit.prompt, 8)])[0]
    assert target not in reverted.text
    assert reverted.text == base
    rolled = loka.rollback(version_with_edit)
    assert rolled.codebook_version > version_with_edit
    assert target in loka.generate([GenerationRequest(edited.edit.prompt, 8)])[0].text
    assert [p.id for p in loka.pieces()].count(edit_piece.id) == 1


def test_mixed_batch_equals_rows_alone(edited):
    loka = edited.loka
    mems = [m.id for m in loka.memories()]
    requests = [
        GenerationRequest(edited.edit.prompt, 8),
        GenerationRequest(edited.unlearn.prompt, 8),
        GenerationRequest("The capital of Orlenia is", 8),
        GenerationRequest(edited.edit.prompt, 8, memory="none"),
        GenerationRequest("Snow is cold and", 8, memory=mems[-1]),
        GenerationRequest(edited.unlearn.paraphrases[0], 8, memory=mems[0]),
    ]
    batched = loka.generate(requests)
    for req, out in zip(requests, batched, strict=True):
        alone = loka.generate([req])[0]
        assert out.text == alone.text, req
        assert out.memory_id == alone.memory_id
    assert len({o.memory_id for o in batched}) >= 3  # really mixed: several memories and none


def test_supersession_replaces_an_earlier_edit(edited):
    loka = edited.loka
    fact = find_fact("Miravel", "capital")
    first = loka.update([PieceSpec(PieceKind.EDIT, fact.prompts[0],
                                   " " + counterfactual_answer(fact, 1))])
    second = loka.update([PieceSpec(PieceKind.EDIT, fact.prompts[0],
                                    " " + counterfactual_answer(fact, 2))])
    assert set(first.pieces_added) <= set(second.pieces_removed)
    pieces = [p for p in loka.pieces() if p.prompt == fact.prompts[0]]
    assert len(pieces) == 1 and pieces[0].target == " " + counterfactual_answer(fact, 2)
    text = loka.generate([GenerationRequest(fact.prompts[0], 8)])[0].text
    assert counterfactual_answer(fact, 2) in text
