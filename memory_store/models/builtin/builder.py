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

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from tqdm.auto import tqdm
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from .corpus import FACTS, GENERAL_PROMPTS, GENERAL_TARGETS, GENERAL_TEXT

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
EOS_TOKEN = "<|endoftext|>"
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


def _cache_root(cache_dir: Path | None) -> Path:
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
    return _cache_root(cache_dir) / "models" / f"{MODEL_NAME}-{default_model_hash()}"


def _is_built(path: Path) -> bool:
    # The info file is written last, so its presence means the build completed.
    return (path / INFO_FILE).is_file() and (path / "config.json").is_file()


@contextlib.contextmanager
def _file_lock(lock_path: Path) -> Iterator[None]:
    """Exclusive advisory lock across processes; blocks until it is free."""
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


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
    with _file_lock(models_dir / ".lock"):
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
    """Train the default model's byte-level BPE tokenizer on the corpus (fast, deterministic).

    No prefix space is added, so ``" Marrowick"`` keeps its space and decodes back exactly,
    and a prompt's tokens followed by its target's tokens match the tokens of the
    concatenated text (the space always opens the answer's first pre-token).
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_CONFIG["vocab_size"],
        min_frequency=TOKENIZER_CONFIG["min_frequency"],
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_tokenizer_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        bos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        model_max_length=TOKENIZER_CONFIG["model_max_length"],
    )


# --- training data ---------------------------------------------------------------------------


def _encode(tokenizer: PreTrainedTokenizerFast, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _prompt_target_pairs(
    tokenizer: PreTrainedTokenizerFast, pairs: Sequence[tuple[str, str]]
) -> list[tuple[list[int], list[int]]]:
    # Prompt and target are encoded apart, the way edit requests are, so the model is
    # trained and scored on exactly the token boundaries callers will use.
    return [(_encode(tokenizer, p), _encode(tokenizer, t)) for p, t in pairs]


def _training_examples(tokenizer: PreTrainedTokenizerFast) -> list[list[int]]:
    """Token ids of every phrasing of every fact, then of every general sentence, + eos."""
    eos = tokenizer.eos_token_id
    pairs = [(p, " " + f.answer) for f in FACTS for p in f.prompts]
    examples = [p + t + [eos] for p, t in _prompt_target_pairs(tokenizer, pairs)]
    return examples + [_encode(tokenizer, s) + [eos] for s in GENERAL_TEXT]


def _collate(examples: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example; padding is masked out of attention and loss."""
    width = max(len(ids) for ids in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    for row, ids in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention[row, : len(ids)] = 1
        labels[row, : len(ids)] = input_ids[row, : len(ids)]
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


# --- evaluation ------------------------------------------------------------------------------


@torch.no_grad()
def _score_pairs(
    model: torch.nn.Module, pairs: Sequence[tuple[list[int], list[int]]], pad_id: int
) -> tuple[list[bool], list[float]]:
    """For each (prompt, target): does greedy decoding start with the target, and its prob.

    One teacher-forced forward pass per batch is equivalent to greedy generation here:
    greedy emits the target iff the argmax at every target position is the target token.
    The probability is that of the whole target (product over its tokens).
    """
    hits: list[bool] = []
    probs: list[float] = []
    for start in range(0, len(pairs), 256):
        chunk = pairs[start : start + 256]
        batch = _collate([p + t for p, t in chunk], pad_id)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        log_probs = logits.log_softmax(dim=-1)
        for row, (prompt, target) in enumerate(chunk):
            positions = torch.arange(len(prompt) - 1, len(prompt) + len(target) - 1)
            span = log_probs[row, positions]
            hits.append(span.argmax(dim=-1).tolist() == target)
            probs.append(span[torch.arange(len(target)), target].sum().exp().item())
    return hits, probs


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
            hits, probs = _score_pairs(model, _prompt_target_pairs(tokenizer, pairs), pad_id)
            scores[f"fact_accuracy_{name}"] = _mean(hits)
            scores[f"fact_prob_{name}"] = _mean(probs)
        general = list(zip(GENERAL_PROMPTS, GENERAL_TARGETS, strict=True))
        hits, _ = _score_pairs(model, _prompt_target_pairs(tokenizer, general), pad_id)
        scores["general_text_accuracy"] = _mean(hits)
    finally:
        model.train(was_training)
    return scores


# --- training --------------------------------------------------------------------------------


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _new_model(tokenizer: PreTrainedTokenizerFast) -> GPT2LMHeadModel:
    config = GPT2Config(
        vocab_size=len(tokenizer),
        **MODEL_CONFIG,
        # Pure memorisation: dropout only slows it down.
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return GPT2LMHeadModel(config)


def _lr_factor(step: int) -> float:
    """Linear warmup, then linear decay to 10% at ``max_steps``."""
    warmup, total = TRAIN_CONFIG["warmup_steps"], TRAIN_CONFIG["max_steps"]
    if step < warmup:
        return (step + 1) / warmup
    return max(0.1, 1.0 - 0.9 * (step - warmup) / max(1, total - warmup))


def _batches(n_examples: int, generator: torch.Generator) -> Iterator[list[int]]:
    """Endless shuffled mini-batches of example indices, one permutation per epoch."""
    size = TRAIN_CONFIG["batch_size"]
    while True:
        order = torch.randperm(n_examples, generator=generator).tolist()
        for start in range(0, n_examples - size + 1, size):
            yield order[start : start + size]


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
    examples = _training_examples(tokenizer)
    generator = torch.Generator().manual_seed(TRAIN_CONFIG["seed"])
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=TRAIN_CONFIG["lr"],
        betas=(0.9, 0.98),
        weight_decay=TRAIN_CONFIG["weight_decay"],
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor)
    max_steps, eval_every = TRAIN_CONFIG["max_steps"], TRAIN_CONFIG["eval_every"]
    started = time.monotonic()
    scores: dict[str, float] = {}
    step = 0
    model.train()
    bar = tqdm(total=max_steps, desc="training loka-default", unit="step", disable=not progress)
    try:
        for step, indices in enumerate(_batches(len(examples), generator), start=1):
            batch = _collate([examples[i] for i in indices], tokenizer.pad_token_id)
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            bar.update(1)
            if step % eval_every and step < max_steps:
                continue
            scores = evaluate_default_model(model, tokenizer)
            bar.set_postfix(loss=loss.item(), acc=scores["fact_accuracy_canonical"])
            logger.debug("step %d loss %.4f scores %s", step, loss.item(), scores)
            if _targets_met(scores):
                break
            if step >= max_steps:
                # No wall-clock cap on purpose: it would make the cached model depend on the
                # machine's load. max_steps bounds the cost instead.
                logger.warning("default model missed its accuracy targets: %s", scores)
                break
    finally:
        bar.close()
    return {**scores, "train_steps": step, "train_seconds": round(time.monotonic() - started, 2)}


@contextlib.contextmanager
def _training_environment(seed: int) -> Iterator[None]:
    """Seed every RNG and train on one thread, restoring the caller's state after.

    One thread because this model is small enough that a second one gains little when the
    machine is idle, while next to other busy processes (test workers, a server) two
    spinning threads ran ten times slower; a fixed thread count also keeps the float
    reduction order, hence the trained weights, the same from run to run.
    """
    threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        state_py, state_np = random.getstate(), np.random.get_state()
        try:
            torch.set_num_threads(TRAIN_CONFIG["threads"])
            _seed_everything(seed)
            yield
        finally:
            random.setstate(state_py)
            np.random.set_state(state_np)
            torch.set_num_threads(threads)


def _build_model_dir(out_dir: Path, progress: bool) -> None:
    """Train the default model and save model, tokenizer and ``loka_model.json`` to out_dir."""
    logger.info("building default model into %s", out_dir)
    tokenizer = build_tokenizer()
    with _training_environment(TRAIN_CONFIG["seed"]):
        model = _new_model(tokenizer)
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
