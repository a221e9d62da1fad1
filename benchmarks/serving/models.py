"""Base models of the serving benchmark: the built-in model and a ~100M random-weight GPT-2."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from memory_store.models.builtin import build_tokenizer, default_model_hash, ensure_default_model

logger = logging.getLogger(__name__)

# GPT-2 small's shape (12 blocks, 768 wide) with the built-in model's 2,000-token vocabulary:
# 87M parameters. Random weights: speed does not depend on what the weights say.
LARGE_CONFIG = {"n_layer": 12, "n_embd": 768, "n_head": 12, "n_positions": 256}
MARKER = "loka_serving_model.json"


@dataclass(frozen=True)
class BenchModel:
    """A model to benchmark: its name, its directory and the torch threads to serve it with."""

    name: str
    path: Path
    threads: int | None  # None: ``Loka.open``'s choice (1 thread below 50M parameters)


def cache_root() -> Path:
    env = os.environ.get("LOKA_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "loka"


def ensure_large_model(seed: int = 0) -> Path:
    """Build (once, then cached) the ~100M random-weight GPT-2 with the default tokenizer."""
    marker = {"config": LARGE_CONFIG, "seed": seed, "tokenizer": default_model_hash()}
    out = cache_root() / "bench-models" / f"serving-gpt2-12x768-{default_model_hash()}"
    marker_file = out / MARKER
    if marker_file.is_file() and json.loads(marker_file.read_text()) == marker:
        return out
    tokenizer = build_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(GPT2Config(
            **LARGE_CONFIG, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.tmp-", dir=out.parent) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        Path(tmp, MARKER).write_text(json.dumps(marker))
        out.mkdir(exist_ok=True)
        for name in sorted(p.name for p in Path(tmp).iterdir() if p.name != MARKER) + [MARKER]:
            os.replace(Path(tmp, name), out / name)
    logger.info("built %s (%d parameters)", out, model.num_parameters())
    return out


def bench_models(quick: bool) -> list[BenchModel]:
    """The default model (1 thread, as ``Loka.open`` picks) and, unless quick, the large one
    on 2 threads (its matrices are big enough for a second thread to pay)."""
    models = [BenchModel("default (1M)", ensure_default_model(progress=False), None)]
    if not quick:
        models.append(BenchModel("gpt2-12x768 (87M)", ensure_large_model(), 2))
    return models
