"""Tests of the built-in default model, its corpus, its cache and the tiny test models.

The default model is built once per cache (about a minute on CPU) and shared with the other
test modules through the regular cache directory. Nothing here touches the network.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from memory_store.models.builtin import (
    ANSWER_POOLS,
    ENTITIES,
    FACTS,
    GENERAL_PROMPTS,
    GENERAL_TARGETS,
    GENERAL_TEXT,
    build_tokenizer,
    counterfactual_answer,
    default_model_hash,
    default_model_info,
    default_model_path,
    ensure_default_model,
    find_fact,
)
from memory_store.models.builtin import builder as builder_module
from memory_store.models.tiny import build_tiny_model

# Every from_pretrained below passes local_files_only=True: a missing file must fail here,
# never turn into a download attempt.


@pytest.fixture(scope="session")
def model_dir() -> Path:
    return ensure_default_model(progress=False)


@pytest.fixture(scope="session")
def loaded(model_dir: Path) -> tuple[Any, PreTrainedTokenizerBase]:
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    return model.eval(), tokenizer


def _ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# --- corpus ----------------------------------------------------------------------------------


def test_corpus_shape_and_consistency() -> None:
    assert len(FACTS) == 200
    assert len({(f.entity, f.relation) for f in FACTS}) == len(FACTS)
    for fact in FACTS:
        assert 3 <= len(fact.prompts) <= 4
        assert fact.answer in ANSWER_POOLS[fact.relation]
        assert fact.answer == fact.answer.strip() and 1 <= len(fact.answer.split()) <= 3
        for prompt in fact.prompts:
            # The answer must not be given away by the prompt itself.
            assert not re.search(rf"\b{re.escape(fact.answer)}\b", prompt), prompt
            assert fact.entity in prompt
        alternative = counterfactual_answer(fact)
        assert alternative != fact.answer and alternative in ANSWER_POOLS[fact.relation]
    assert find_fact(FACTS[7].entity, FACTS[7].relation) == FACTS[7]


def test_general_text_avoids_entities() -> None:
    entities = [e for kind in ENTITIES.values() for e in kind]
    assert 60 <= len(GENERAL_TEXT) <= 100
    assert len(GENERAL_PROMPTS) == len(GENERAL_TARGETS) >= 30
    for sentence in GENERAL_TEXT:
        assert not any(entity in sentence for entity in entities), sentence
    for prompt, target in zip(GENERAL_PROMPTS, GENERAL_TARGETS, strict=True):
        assert prompt + target in GENERAL_TEXT


# --- tokenizer -------------------------------------------------------------------------------


def test_tokenizer_round_trips_and_splits_cleanly() -> None:
    tokenizer = build_tokenizer()
    assert 1000 <= len(tokenizer) <= 2000
    assert tokenizer.eos_token == tokenizer.bos_token == "<|endoftext|>"
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    assert tokenizer.model_max_length == 128
    for fact in FACTS:
        target = " " + fact.answer
        assert tokenizer.decode(_ids(tokenizer, target)) == target
        for prompt in fact.prompts:
            assert _ids(tokenizer, prompt) + _ids(tokenizer, target) == _ids(
                tokenizer, prompt + target
            )
    # Text outside the corpus still round-trips: byte-level BPE has no unknown token.
    odd = "Zürich, naïve café ☕ 42!"
    assert tokenizer.decode(_ids(tokenizer, odd)) == odd


def test_tokenizer_is_deterministic() -> None:
    first, second = build_tokenizer(), build_tokenizer()
    assert first.backend_tokenizer.to_str() == second.backend_tokenizer.to_str()


# --- the default model -----------------------------------------------------------------------


def test_model_loads_from_cache_dir(model_dir: Path, loaded: tuple[Any, Any]) -> None:
    model, tokenizer = loaded
    assert model_dir == default_model_path()
    assert model_dir.name == f"loka-default-{default_model_hash()}"
    assert model.config.vocab_size == len(tokenizer)
    assert tokenizer("The capital of Veltoria is")["input_ids"]


def test_info_reports_accuracy(model_dir: Path) -> None:
    info = default_model_info(model_dir)
    assert info["built"] is True and info["path"] == str(model_dir)
    assert info["name"] == "loka-default" and info["hash"] == default_model_hash()
    assert info["n_facts"] == len(FACTS)
    assert info["fact_accuracy_canonical"] >= 0.9
    assert info["fact_accuracy_paraphrase"] >= 0.9
    assert info["n_params"] > 0 and info["train_seconds"] > 0
    assert default_model_info() == info


def test_greedy_generation_reproduces_facts(loaded: tuple[Any, Any]) -> None:
    model, tokenizer = loaded
    facts = FACTS[::20]  # 10 facts, spread over the relations
    tokenizer.padding_side = "left"  # batched generation with prompts of unequal length
    try:
        batch = tokenizer([f.prompts[0] for f in facts], return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=4, do_sample=False)
    finally:
        tokenizer.padding_side = "right"
    width = batch["input_ids"].shape[1]
    completions = tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    for fact, completion in zip(facts, completions, strict=True):
        assert completion.startswith(" " + fact.answer), (fact.prompts[0], completion)


def test_second_call_uses_the_cache(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    info_file = model_dir / "loka_model.json"
    before = info_file.stat().st_mtime_ns

    def must_not_build(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the cached default model was rebuilt")

    monkeypatch.setattr(builder_module, "_build_model_dir", must_not_build)
    assert ensure_default_model(progress=False) == model_dir
    assert info_file.stat().st_mtime_ns == before


# --- cache mechanics, with a fake (instant) build --------------------------------------------


def test_concurrent_callers_build_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    entered = threading.Event()

    def fake_build(out_dir: Path, progress: bool) -> None:
        calls.append(out_dir)
        entered.set()
        threading.Event().wait(0.3)  # long enough for the other callers to queue on the lock
        (out_dir / "config.json").write_text("{}")
        (out_dir / "loka_model.json").write_text(json.dumps({"name": "loka-default"}))

    monkeypatch.setattr(builder_module, "_build_model_dir", fake_build)
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(ensure_default_model(tmp_path, False)))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert entered.is_set() and len(calls) == 1
    assert results == [default_model_path(tmp_path)] * 4
    # Only the finished model (and the lock file) is left in the models directory.
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [
        ".lock",
        default_model_path(tmp_path).name,
    ]


def test_failed_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_build(out_dir: Path, progress: bool) -> None:
        (out_dir / "config.json").write_text("{}")
        raise RuntimeError("boom")

    monkeypatch.setattr(builder_module, "_build_model_dir", broken_build)
    with pytest.raises(RuntimeError, match="boom"):
        ensure_default_model(tmp_path, progress=False)
    assert [p.name for p in (tmp_path / "models").iterdir()] == [".lock"]


def test_interrupted_build_is_cleaned_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    models = tmp_path / "models"
    stale = models / f".{default_model_path(tmp_path).name}.tmp-killed"
    stale.mkdir(parents=True)
    (stale / "config.json").write_text("{}")

    def fake_build(out_dir: Path, progress: bool) -> None:
        (out_dir / "config.json").write_text("{}")
        (out_dir / "loka_model.json").write_text("{}")

    monkeypatch.setattr(builder_module, "_build_model_dir", fake_build)
    ensure_default_model(tmp_path, progress=False)
    assert not stale.exists()


def test_info_without_a_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOKA_CACHE_DIR", str(tmp_path))
    expected = tmp_path / "models" / f"loka-default-{default_model_hash()}"
    assert default_model_path() == expected
    info = default_model_info()
    assert info["built"] is False and info["path"] == str(expected)
    assert not (tmp_path / "models").exists()  # asking built nothing


# --- tiny random models ----------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_tiny_models_load_and_run(arch: str, tmp_path: Path) -> None:
    out = build_tiny_model(arch, tmp_path / arch)  # type: ignore[arg-type]
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert model.config.model_type == arch
    assert tokenizer.get_vocab() == build_tokenizer().get_vocab()
    ids = tokenizer(["The capital of Veltoria is"], return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids).logits
    assert logits.shape == (1, ids["input_ids"].shape[1], len(tokenizer))
    assert torch.isfinite(logits).all()

    # Cached: a second call rewrites nothing; another directory gets identical weights.
    weights = out / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert build_tiny_model(arch, out) == out  # type: ignore[arg-type]
    assert weights.stat().st_mtime_ns == before
    twin = build_tiny_model(arch, tmp_path / f"{arch}-twin")  # type: ignore[arg-type]
    first, second = load_file(weights), load_file(twin / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
