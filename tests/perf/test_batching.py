"""Batched mixed-memory generation equals per-request generation, token for token: one batch,
rows that leave early, rows that join a running batch (continuous batching), streams."""

from __future__ import annotations

from pathlib import Path

import torch

from memory_store import Loka
from memory_store.codebook.synthetic import publish_synthetic
from memory_store.lora.weights import AdapterWeights
from memory_store.serving.lora import BatchState
from memory_store.types import GenerationRequest, GenerationResult

from .conftest import Codebook


def _mixed(cb: Codebook) -> list[GenerationRequest]:
    """Routed rows, fixed memories, base rows, sampling with seeds, stop strings and lengths
    from 1 to 24 tokens, so rows finish at different steps."""
    reqs = []
    for i, prompt in enumerate(cb.prompts + cb.other_prompts):
        memory = ["auto", "none", cb.memories[(i * 5) % len(cb.memories)]][i % 3]
        reqs.append(GenerationRequest(
            prompt, max_new_tokens=1 + (i * 7) % 24, memory=memory,
            temperature=0.9 if i % 4 == 3 else 0.0, seed=i, stop=(" in",) if i % 5 == 2 else ()))
    return reqs


def _same(a: GenerationResult, b: GenerationResult) -> None:
    assert (a.text, a.memory_id, a.completion_tokens, a.finish_reason, a.prompt_tokens) == (
        b.text, b.memory_id, b.completion_tokens, b.finish_reason, b.prompt_tokens)


def test_memories_change_outputs(codebook: Codebook) -> None:
    """The fixture is meaningful: rows routed to their memory differ from the base model."""
    routed = codebook.loka.generate([GenerationRequest(p, 8) for p in codebook.prompts])
    base = codebook.loka.generate([GenerationRequest(p, 8, memory="none")
                                   for p in codebook.prompts])
    assert [r.memory_id for r in routed] == codebook.memories
    assert sum(r.text != b.text for r, b in zip(routed, base, strict=True)) >= len(routed) // 2


def test_batch_equals_requests_alone(codebook: Codebook) -> None:
    reqs = _mixed(codebook)
    batch = codebook.loka.generate(reqs)
    assert len({r.memory_id for r in batch}) > 3  # several memories and the base in one batch
    assert len({r.completion_tokens for r in batch}) > 3  # rows finish at different steps
    for req, got in zip(reqs, batch, strict=True):
        _same(got, codebook.loka.generate([req])[0])


def test_finished_rows_leave_the_batch(codebook: Codebook) -> None:
    stats = codebook.loka.generator.stats
    before = stats.copy()
    reqs = [GenerationRequest(codebook.prompts[0], 1), GenerationRequest(codebook.prompts[1], 12)]
    codebook.loka.generator.ignore_eos = True
    try:
        codebook.loka.generate(reqs)
    finally:
        codebook.loka.generator.ignore_eos = False
    # the one-token row is gone after the first token: 11 more steps with one row each
    assert stats.decode_steps - before.decode_steps == 11
    assert stats.decode_rows - before.decode_rows == 11


def test_rows_joining_a_running_batch(codebook: Codebook) -> None:
    """Requests that join between decoding steps, with other memories and prompt lengths, and
    rows that leave meanwhile: every result as if served alone."""
    reqs = _mixed(codebook)
    batch = codebook.loka.batch()
    results: dict[int, GenerationResult] = {}
    waves = [reqs[0:3], reqs[3:4], reqs[4:9], reqs[9:]]
    tag = 0
    steps = 0
    while waves or len(batch):
        if waves and steps % 3 == 0:  # a wave joins every third step
            wave = waves.pop(0)
            batch.add(wave, list(range(tag, tag + len(wave))))
            tag += len(wave)
        for update in batch.step():
            assert update.text == ""  # no streamed rows here
            results[update.tag] = update.result
        steps += 1
    assert sorted(results) == list(range(len(reqs)))
    for i, req in enumerate(reqs):
        _same(results[i], codebook.loka.generate([req])[0])


def test_streamed_rows_in_a_running_batch(codebook: Codebook) -> None:
    """Streamed and plain rows decode together; a streamed row's chunks add up to its result,
    and a dropped row leaves without a result while the others go on unchanged."""
    reqs = _mixed(codebook)[:9]
    batch = codebook.loka.batch()
    batch.add(reqs[:8], list(range(8)), [i % 2 == 0 for i in range(8)])
    texts = dict.fromkeys(range(9), "")
    results: dict[int, GenerationResult] = {}
    steps = 0
    while len(batch):
        if steps == 1:
            batch.add(reqs[8:], [8], [True])
            assert batch.drop(lambda tag: tag == 4) == [4]
        for update in batch.step():
            texts[update.tag] += update.text
            if update.result is not None:
                results[update.tag] = update.result
        steps += 1
    assert sorted(results) == [0, 1, 2, 3, 5, 6, 7, 8]
    for i, result in results.items():
        _same(result, codebook.loka.generate([reqs[i]])[0])
        assert texts[i] == (result.text if i % 2 == 0 else "")


def test_stream_equals_generate(codebook: Codebook) -> None:
    for req in _mixed(codebook)[:6]:
        chunks = list(codebook.loka.generate_stream(req))
        final = chunks[-1].result
        _same(final, codebook.loka.generate([req])[0])
        assert "".join(c.text for c in chunks) == final.text


def _adapter(seed: int, rank: int = 4, alpha: float = 8.0) -> AdapterWeights:
    g = torch.Generator().manual_seed(seed)
    return AdapterWeights(rank, alpha, {"m": torch.randn(rank, 6, generator=g)},
                          {"m": torch.randn(5, rank, generator=g)})


def test_batch_state_select_and_concat_equal_a_fresh_state() -> None:
    """Rows leaving and joining a batch reuse its gathered matrices; the deltas are the same,
    bit for bit, as those of a state built from the adapters (mixed ranks included)."""
    adapters = [_adapter(0), None, _adapter(1, rank=2), _adapter(2), None]
    more = [None, _adapter(3, rank=8)]
    x = torch.randn(7, 3, 6)
    out = torch.randn(7, 3, 5)
    keep = [4, 0, 2]
    fresh = BatchState([adapters[i] for i in keep] + more, torch.float32)
    joined = BatchState(adapters, torch.float32).select(keep).concat(
        BatchState(more, torch.float32))
    rows = keep + [5, 6]
    assert torch.equal(joined.delta("m", x[rows], out[rows]), fresh.delta("m", x[rows], out[rows]))
    # rows without a memory are untouched
    assert torch.equal(fresh.delta("m", x[rows], out[rows])[[0, 3]], out[rows][[0, 3]])


def test_batch_state_all_rows_path_equals_the_gathered_path() -> None:
    adapters = [_adapter(i) for i in range(4)]
    x, out = torch.randn(4, 2, 6), torch.randn(4, 2, 5)
    everyone = BatchState(adapters, torch.float32).delta("m", x, out)
    with_base_row = BatchState(adapters + [None], torch.float32).delta(
        "m", torch.cat([x, x[:1]]), torch.cat([out, out[:1]]))
    assert torch.equal(everyone, with_base_row[:4])


def test_routed_memories_on_a_half_precision_model(codebook: Codebook, tmp_path: Path) -> None:
    """The per-row LoRA matrices take the model's dtype (the pooled routing keys are float32:
    building them in the keys' dtype made bfloat16 and float16 models fail)."""
    loka = Loka.open(tmp_path, codebook.model, dtype="bfloat16")
    try:
        memories = [m for m, _ in publish_synthetic(loka, codebook.prompts[:3], 3)]
        loka.close()
        loka = Loka.open(tmp_path, codebook.model, dtype="bfloat16")
        reqs = [GenerationRequest(p, 4) for p in codebook.prompts[:3]]
        assert [r.memory_id for r in loka.generate(reqs)] == memories
    finally:
        loka.close()
