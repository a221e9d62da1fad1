"""Build, cache and describe the built-in default model.

The default model is a small GPT-2 trained from scratch, on CPU, on the fictional facts of
:mod:`memory_store.models.builtin.corpus`, with its own byte-level BPE tokenizer. It lets the
service and the tests run with no model hub and no download: the first call to
:func:`ensure_default_model` trains it (about one CPU-minute, on one thread) and caches it under
``<cache>/models/loka-default-<hash12>``; later calls return the cached directory.

The hash covers the corpus, every config below and :data:`BUILDER_VERSION`, so any change to
them builds a new model next to the old one instead of reusing a stale one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

from memory_store.files import file_lock
from memory_store.models.builtin.corpus import FACTS, GENERAL_PROMPTS, GENERAL_TARGETS, GENERAL_TEXT
from memory_store.models.builtin.training import (
    EOS_TOKEN,
    Schedule,
    bpe_tokenizer,
    encode,
    new_gpt2,
    score_pairs,
    train_until,
    training_environment,
)

__all__ = [
    "BUILDER_VERSION",
    "EOS_TOKEN",
    "MODEL_CONFIG",
    "MODEL_NAME",
    "TOKENIZER_CONFIG",
    "TRAIN_CONFIG",
    "build_tokenizer",
    "default_model_hash",
    "default_model_info",
    "default_model_path",
    "ensure_default_model",
    "evaluate_default_model",
]

logger = logging.getLogger(__name__)

BUILDER_VERSION = "1"
"""Bump to force a rebuild when the build code changes in a way the configs do not show."""

MODEL_NAME = "loka-default"
INFO_FILE = "loka_model.json"
MAX_LENGTH = 128

TOKENIZER_CONFIG: dict[str, Any] = {
    "type": "byte_level_bpe",
    "vocab_size": 2000,
    "min_frequency": 2,
    "model_max_length": MAX_LENGTH,
}
MODEL_CONFIG: dict[str, Any] = {
    "n_layer": 4,
    "n_embd": 128,
    "n_head": 4,
    "n_positions": MAX_LENGTH,
}
TRAIN_CONFIG: dict[str, Any] = {
    "seed": 0,
    "threads": 1,
    "batch_size": 16,
    "lr": 2e-3,
    "weight_decay": 0.01,
    "warmup_steps": 100,
    "max_steps": 3000,
    "eval_every": 100,
    # Training stops at the first evaluation that meets all three targets; the probability
    # target leaves a margin, so that the facts survive small perturbations (adapters,
    # padding) and are not merely the argmax by a hair.
    "target_canonical": 1.0,
    "target_paraphrase": 0.99,
    "target_prob_canonical": 0.9,
}


# --- paths and hashing -----------------------------------------------------------------------


def cache_root(cache_dir: Path | None = None) -> Path:
    """``cache_dir``, else ``$LOKA_CACHE_DIR``, else ``~/.cache/loka``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("LOKA_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "loka"


def default_model_hash() -> str:
    """The 12-hex-digit hash of everything the default model is built from."""
    payload = {
        "builder_version": BUILDER_VERSION,
        "facts": [asdict(f) for f in FACTS],
        "general_text": list(GENERAL_TEXT),
        "tokenizer": TOKENIZER_CONFIG,
        "model": MODEL_CONFIG,
        "train": TRAIN_CONFIG,
    }
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def default_model_path(cache_dir: Path | None = None) -> Path:
    """Where the default model lives (or would live) under ``cache_dir``.

    ``cache_dir`` defaults to ``$LOKA_CACHE_DIR``, else ``~/.cache/loka``. Nothing is built.
    """
    return cache_root(cache_dir) / "models" / f"{MODEL_NAME}-{default_model_hash()}"


def _is_built(path: Path) -> bool:
    # The info file is written last, so its presence means the build completed.
    return (path / INFO_FILE).is_file() and (path / "config.json").is_file()


def _remove_stale_temp_dirs(models_dir: Path) -> None:
    """Delete build directories left by killed builds; call only while holding the lock.

    Temporary build directories exist only while their builder holds the lock, so any that
    a lock holder finds belongs to a build that died.
    """
    for stale in models_dir.glob(f".{MODEL_NAME}-*.tmp-*"):
        logger.warning("removing directory of an interrupted build: %s", stale)
        shutil.rmtree(stale, ignore_errors=True)


# --- public entry points ---------------------------------------------------------------------


def ensure_default_model(cache_dir: Path | None = None, progress: bool = True) -> Path:
    """Return the directory of the default model, building it first if it is not cached.

    The directory loads with ``AutoModelForCausalLM.from_pretrained`` and
    ``AutoTokenizer.from_pretrained``. The build happens in a temporary directory that is
    renamed into place, under a file lock, so concurrent callers (test workers, a server)
    never build twice: a second caller waits for the first, then finds the cached model.
    """
    path = default_model_path(cache_dir)
    if _is_built(path):
        return path
    models_dir = path.parent
    models_dir.mkdir(parents=True, exist_ok=True)
    with file_lock(models_dir / ".lock"):
        if _is_built(path):
            logger.info("default model was built by another process: %s", path)
            return path
        if path.exists():
            # Not ours to trust: a complete build is only ever created by the rename below.
            logger.warning("removing incomplete default model directory %s", path)
            shutil.rmtree(path)
        _remove_stale_temp_dirs(models_dir)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=models_dir))
        try:
            _build_model_dir(tmp, progress=progress)
            # mkdtemp makes the directory private; a cached model should be readable by all.
            tmp.chmod(0o755)
            os.rename(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    logger.info("default model built: %s", path)
    return path


def default_model_info(path: Path | None = None) -> dict[str, Any]:
    """Describe the default model from its ``loka_model.json``; never builds anything.

    With ``path``, read that directory; without, the default cache path. The result always
    has ``"path"`` and ``"built"``; when the model is not built yet it has only those, plus
    ``"name"``, ``"hash"`` and ``"builder_version"`` of the model that would be built.
    """
    model_dir = Path(path) if path is not None else default_model_path()
    info_file = model_dir / INFO_FILE
    if not info_file.is_file():
        info: dict[str, Any] = {"name": MODEL_NAME, "builder_version": BUILDER_VERSION}
        if path is None:
            info["hash"] = default_model_hash()
        return {**info, "path": str(model_dir), "built": False}
    info = json.loads(info_file.read_text())
    return {**info, "path": str(model_dir), "built": True}


# --- tokenizer -------------------------------------------------------------------------------


def _tokenizer_corpus() -> list[str]:
    lines = [f"{prompt} {fact.answer}" for fact in FACTS for prompt in fact.prompts]
    return lines + list(GENERAL_TEXT)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Train the default model's byte-level BPE tokenizer on the corpus (fast, deterministic)."""
    return bpe_tokenizer(_tokenizer_corpus(), TOKENIZER_CONFIG["vocab_size"],
                         TOKENIZER_CONFIG["model_max_length"], TOKENIZER_CONFIG["min_frequency"])


# --- training data ---------------------------------------------------------------------------


def _prompt_target_pairs(
    tokenizer: PreTrainedTokenizerFast, pairs: Sequence[tuple[str, str]]
) -> list[tuple[list[int], list[int]]]:
    # Prompt and target are encoded apart, the way edit requests are, so the model is
    # trained and scored on exactly the token boundaries callers will use.
    return [(encode(tokenizer, p), encode(tokenizer, t)) for p, t in pairs]


def _training_examples(tokenizer: PreTrainedTokenizerFast) -> list[list[int]]:
    """Token ids of every phrasing of every fact, then of every general sentence, + eos."""
    eos = tokenizer.eos_token_id
    pairs = [(p, " " + f.answer) for f in FACTS for p in f.prompts]
    examples = [p + t + [eos] for p, t in _prompt_target_pairs(tokenizer, pairs)]
    return examples + [encode(tokenizer, s) + [eos] for s in GENERAL_TEXT]


# --- evaluation ------------------------------------------------------------------------------


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def evaluate_default_model(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast
) -> dict[str, float]:
    """Greedy-prefix accuracy and mean target probability of ``model`` on the corpus.

    Keys: ``fact_accuracy_canonical`` / ``fact_prob_canonical`` (canonical prompts),
    ``fact_accuracy_paraphrase`` / ``fact_prob_paraphrase`` (all other prompts) and
    ``general_text_accuracy`` (GENERAL_PROMPTS continued with their true last word).
    Useful to check that an edit left the other facts alone.
    """
    was_training = model.training
    model.eval()
    try:
        pad_id = tokenizer.pad_token_id
        groups = {
            "canonical": [(f.prompts[0], " " + f.answer) for f in FACTS],
            "paraphrase": [(p, " " + f.answer) for f in FACTS for p in f.prompts[1:]],
        }
        scores: dict[str, float] = {}
        for name, pairs in groups.items():
            hits, probs = score_pairs(model, _prompt_target_pairs(tokenizer, pairs), pad_id)
            scores[f"fact_accuracy_{name}"] = _mean(hits)
            scores[f"fact_prob_{name}"] = _mean(probs)
        general = list(zip(GENERAL_PROMPTS, GENERAL_TARGETS, strict=True))
        hits, _ = score_pairs(model, _prompt_target_pairs(tokenizer, general), pad_id)
        scores["general_text_accuracy"] = _mean(hits)
    finally:
        model.train(was_training)
    return scores


# --- training --------------------------------------------------------------------------------


def _schedule() -> Schedule:
    c = TRAIN_CONFIG
    return Schedule(c["batch_size"], c["lr"], c["weight_decay"], c["warmup_steps"],
                    c["max_steps"], c["eval_every"], c["seed"], c["threads"])


def _targets_met(scores: dict[str, float]) -> bool:
    return (
        scores["fact_accuracy_canonical"] >= TRAIN_CONFIG["target_canonical"]
        and scores["fact_accuracy_paraphrase"] >= TRAIN_CONFIG["target_paraphrase"]
        and scores["fact_prob_canonical"] >= TRAIN_CONFIG["target_prob_canonical"]
    )


def _train(
    model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerFast, progress: bool
) -> dict[str, Any]:
    """Train until the accuracy targets are met, or for max_steps; return the stats."""
    return train_until(model, _training_examples(tokenizer), tokenizer.pad_token_id,
                       _schedule(), lambda: evaluate_default_model(model, tokenizer),
                       _targets_met, MODEL_NAME, progress)


def _build_model_dir(out_dir: Path, progress: bool) -> None:
    """Train the default model and save model, tokenizer and ``loka_model.json`` to out_dir."""
    logger.info("building default model into %s", out_dir)
    tokenizer = build_tokenizer()
    with training_environment(TRAIN_CONFIG["seed"], TRAIN_CONFIG["threads"]):
        model = new_gpt2(tokenizer, **MODEL_CONFIG)
        stats = _train(model, tokenizer, progress)
    model.eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    info = {
        "name": MODEL_NAME,
        "hash": default_model_hash(),
        "builder_version": BUILDER_VERSION,
        "n_params": sum(p.numel() for p in model.parameters()),
        "n_facts": len(FACTS),
        "vocab_size": len(tokenizer),
        **stats,
        "config": {"model": MODEL_CONFIG, "tokenizer": TOKENIZER_CONFIG, "train": TRAIN_CONFIG},
        "torch_version": torch.__version__,
    }
    (out_dir / INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    logger.info(
        "default model: %d params, canonical %.3f, paraphrase %.3f, %.1fs",
        info["n_params"],
        stats.get("fact_accuracy_canonical", 0.0),
        stats.get("fact_accuracy_paraphrase", 0.0),
        stats["train_seconds"],
    )
