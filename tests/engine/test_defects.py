"""Defects of issue 9, each pinned by a test that failed before its fix: Mixtral's LoRA
targets, several memories per LSH bucket, LSH settings pinned per store, supersession that
normalises prompts and deduplicates within a batch."""

from __future__ import annotations

import time

import numpy as np
import pytest
from torch import nn
from transformers import MixtralConfig, MixtralForCausalLM

from memory_store import Loka, LokaConfig
from memory_store.codebook.store import MemoryRecord, PieceRecord, Store
from memory_store.config import KeySettings, LoraSettings, MappingSettings, TrainerSettings
from memory_store.models.access import describe
from memory_store.models.tiny import build_tiny_model
from memory_store.types import PieceKind, PieceSpec
from memory_store.update.mapping import LshTable, join_existing, pinned_lsh
from memory_store.update.supersede import deduplicate, superseded


# ------------------------------------------------------------------ a. Mixtral's LoRA targets
def _tiny_mixtral() -> MixtralForCausalLM:
    return MixtralForCausalLM(MixtralConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
        num_experts_per_tok=2, max_position_embeddings=64))


class _Expert(nn.Module):  # transformers 4.x: MixtralBlockSparseTop2MLP
    def __init__(self, d: int, f: int) -> None:
        super().__init__()
        self.w1, self.w2, self.w3 = nn.Linear(d, f), nn.Linear(f, d), nn.Linear(d, f)


class _SparseMoe(nn.Module):  # transformers 4.x: MixtralSparseMoeBlock
    def __init__(self, d: int, f: int, n: int) -> None:
        super().__init__()
        self.gate = nn.Linear(d, n, bias=False)  # the router
        self.experts = nn.ModuleList(_Expert(d, f) for _ in range(n))


def test_mixtral_adapts_the_experts_never_the_router() -> None:
    # the module layout of transformers 4.x: one Linear w1/w2/w3 per expert
    model = _tiny_mixtral()
    for layer in model.model.layers:
        layer.block_sparse_moe = _SparseMoe(32, 64, 4)
    names = {t.name for t in describe(model, LoraSettings(), KeySettings()).targets}
    assert names == {f"model.layers.1.block_sparse_moe.experts.{e}.{w}"
                     for e in range(4) for w in ("w1", "w2", "w3")}


def test_mixtral_with_fused_experts_opens_and_skips_the_router() -> None:
    # transformers 5 fuses the experts into 3-D parameters (no Linear to wrap): the adapter
    # goes on the attention projections PEFT defaults to for Mixtral, never on the router
    layout = describe(_tiny_mixtral(), LoraSettings(), KeySettings())
    names = {t.name for t in layout.targets}
    assert names == {"model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"}
    assert not any("gate" in n for n in names)


# ------------------------------------------------------------------ b. several memories a bucket
def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _memory(mid: str, key: np.ndarray, bucket: int) -> MemoryRecord:
    return MemoryRecord(mid, "edit", "h", f"adapters/{mid}/h", key, bucket, None, {}, None, 0.0)


def test_a_piece_joins_the_nearest_memory_with_room_in_its_bucket() -> None:
    rng = np.random.default_rng(0)
    lsh = LshTable(16, 1, seed=0)  # 2 buckets: many memories share one
    keys = _unit(rng.standard_normal((40, 16)))
    bucket0 = [k for k in keys if lsh.buckets(k[None])[0] == 0][:6]
    memories = {f"mem_{i:06d}": _memory(f"mem_{i:06d}", k, 0) for i, k in enumerate(bucket0)}
    counts = dict.fromkeys(memories, 1)
    counts["mem_000002"] = 8  # full
    settings = MappingSettings(capacity=8, join_similarity=0.5)
    # a paraphrase-like neighbour of each memory's key, staying in bucket 0
    new_keys, new_ids, want = [], [], {}
    for i, mid in enumerate(memories):
        for scale in (0.05, 0.1, 0.2):
            k = _unit(memories[mid].key + scale * rng.standard_normal(16))
            if lsh.buckets(k[None])[0] == 0:
                break
        new_keys.append(k)
        new_ids.append(f"pc_{i:06d}")
        want[f"pc_{i:06d}"] = mid
    joined, rest = join_existing(new_ids, np.stack(new_keys), memories, counts, lsh, settings)
    got = {pid: mid for mid, pids in joined.items() for pid in pids}
    assert rest == ["pc_000002"]  # its memory is full and no other is similar enough
    assert got == {p: m for p, m in want.items() if p != "pc_000002"}


# ------------------------------------------------------------------ c. LSH settings pinned
def test_lsh_settings_are_pinned_in_the_store(tmp_path) -> None:
    store = Store(tmp_path / "store")
    first = pinned_lsh(store, bits=8, seed=0, dim=16)
    again = pinned_lsh(store, bits=3, seed=7, dim=16)  # changed settings later
    assert np.array_equal(again.planes, first.planes) and again.planes.shape == (8, 16)
    store.close()


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    return build_tiny_model("gpt2", tmp_path_factory.mktemp("tiny") / "gpt2")


def test_reopening_with_other_lsh_settings_keeps_the_stored_buckets(tiny_gpt2, tmp_path):
    fast = TrainerSettings(steps=2, verify_rounds=0)
    Loka.open(tmp_path / "s", tiny_gpt2, config=LokaConfig(trainer=fast)).close()
    other = LokaConfig(trainer=fast.model_copy(update={"seed": 7}),
                       mapping=MappingSettings(lsh_bits=3))
    loka = Loka.open(tmp_path / "s", tiny_gpt2, config=other)
    prompt = "The capital of the country is"
    result = loka.update([PieceSpec(PieceKind.EDIT, prompt, " Paris")])
    bucket = loka.memory(result.memories_created[0]).bucket
    creation = LshTable(loka.layout.hidden_size, 8, seed=0)  # the settings it was created with
    assert bucket == int(creation.buckets(loka.keys([prompt]))[0])
    loka.close()


# ------------------------------------------------------------------ d. supersession
def _stored(pid: str, kind: PieceKind, prompt: str, target: str) -> PieceRecord:
    return PieceRecord(pid, kind, prompt, target, (), "mem_000001", np.zeros((1, 4)), time.time())


def test_supersession_ignores_whitespace_and_case() -> None:
    stored = [_stored("pc_000001", PieceKind.EDIT, "Where does  Ada live?", " Oslo")]
    assert superseded(stored, [PieceSpec(PieceKind.EDIT, "where does ada live?", " Rome")]) \
        == ["pc_000001"]


def test_a_batch_is_deduplicated_the_later_request_winning() -> None:
    e = PieceKind.EDIT
    u = PieceKind.UNLEARN
    batch = [PieceSpec(e, "Where does Ada live?", " Oslo"),
             PieceSpec(e, "Who is Bo?", " a baker"),
             PieceSpec(e, "where does  ada live?", " Rome"),  # replaces the first
             PieceSpec(u, "Who is Bo?", " a baker"),  # an unlearn removes the edit of Bo
             PieceSpec(u, "Who is Cy?", " a cook"),
             PieceSpec(u, "Who is Cy?", " a chef")]  # two unlearn targets of one prompt coexist
    assert deduplicate(batch) == [2, 3, 4, 5]
