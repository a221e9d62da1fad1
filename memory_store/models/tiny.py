"""Tiny random-weight models, for tests that must run on more than one architecture.

They share the default model's tokenizer (trained in well under a second, no trained model
needed), so the same prompts and targets work on all of them. Their outputs are meaningless;
they exist to check that code handles the module layout of GPT-2 and Llama alike.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from memory_store.models.builtin.builder import (
    BUILDER_VERSION,
    MAX_LENGTH,
    build_tokenizer,
    default_model_hash,
)

__all__ = ["TINY_CONFIGS", "build_tiny_model"]

logger = logging.getLogger(__name__)

MARKER_FILE = "loka_tiny.json"

TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "gpt2": {"n_layer": 2, "n_embd": 64, "n_head": 4, "n_positions": MAX_LENGTH},
    "llama": {
        "num_hidden_layers": 2,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": MAX_LENGTH,
    },
}
"""Architecture hyper-parameters of the tiny models, by ``arch``."""


def _marker(arch: str, seed: int) -> dict[str, Any]:
    # The default model hash covers the corpus and tokenizer config, hence the tokenizer.
    return {
        "arch": arch,
        "seed": seed,
        "config": TINY_CONFIGS[arch],
        "builder_version": BUILDER_VERSION,
        "corpus_hash": default_model_hash(),
    }


def _is_cached(out_dir: Path, marker: dict[str, Any]) -> bool:
    marker_file = out_dir / MARKER_FILE
    if not (out_dir / "config.json").is_file() or not marker_file.is_file():
        return False
    try:
        return json.loads(marker_file.read_text()) == marker
    except (OSError, ValueError):
        return False


def _new_tiny_model(arch: str, tokenizer: PreTrainedTokenizerFast) -> PreTrainedModel:
    special = {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if arch == "gpt2":
        return GPT2LMHeadModel(GPT2Config(**TINY_CONFIGS["gpt2"], **special))
    if arch == "llama":
        return LlamaForCausalLM(LlamaConfig(**TINY_CONFIGS["llama"], **special))
    raise ValueError(f"unknown tiny model architecture {arch!r}; use 'gpt2' or 'llama'")


def build_tiny_model(arch: Literal["gpt2", "llama"], out_dir: Path, seed: int = 0) -> Path:
    """Save a tiny random-weight ``arch`` model and the default tokenizer to ``out_dir``.

    Deterministic for a given ``seed``, and cached: if ``out_dir`` already holds the same
    build, it is returned untouched. Files are written to a temporary sibling directory and
    moved in one by one with atomic replaces, marker last, so concurrent callers are safe
    and a half-written directory is never taken for a finished one. Returns ``out_dir``.
    """
    if arch not in TINY_CONFIGS:
        raise ValueError(f"unknown tiny model architecture {arch!r}; use 'gpt2' or 'llama'")
    out_dir = Path(out_dir)
    marker = _marker(arch, seed)
    if _is_cached(out_dir, marker):
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    # fork_rng keeps the caller's global RNG state as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _new_tiny_model(arch, tokenizer)
    model.eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent) as tmp:
        staging = Path(tmp)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / MARKER_FILE).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
        names = sorted(p.name for p in staging.iterdir() if p.name != MARKER_FILE)
        for name in [*names, MARKER_FILE]:
            os.replace(staging / name, out_dir / name)
    logger.info("tiny %s model (%d params) saved to %s", arch, model.num_parameters(), out_dir)
    return out_dir
