"""Training a small GPT-2 from scratch on CPU until it knows its corpus: the built-in model
(``builder``) and the base models of the benchmark suites are both made this way.

Deterministic: one thread, every RNG seeded (``training_environment``), a fixed schedule (linear
warmup, then linear decay to 10%), and evaluation every ``eval_every`` steps until the targets
are met or ``max_steps`` is reached (no wall-clock cap: it would make the model depend on the
machine's load).
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from tqdm.auto import tqdm
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

EOS_TOKEN = "<|endoftext|>"


@dataclass(frozen=True)
class Schedule:
    """Optimiser and schedule of one training run."""

    batch_size: int
    lr: float
    weight_decay: float
    warmup_steps: int
    max_steps: int
    eval_every: int
    seed: int = 0
    threads: int = 1

    def lr_factor(self, step: int) -> float:
        """Linear warmup, then linear decay to 10% at ``max_steps``."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        return max(0.1, 1.0 - 0.9 * (step - self.warmup_steps) /
                   max(1, self.max_steps - self.warmup_steps))


def bpe_tokenizer(texts: Sequence[str], vocab_size: int, max_length: int,
                  min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``texts`` (fast, deterministic).

    No prefix space is added, so ``" Marrowick"`` keeps its space and decodes back exactly,
    and a prompt's tokens followed by its target's tokens match the tokens of the
    concatenated text (the space always opens the answer's first pre-token)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=[EOS_TOKEN],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(list(texts), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS_TOKEN,
                                   bos_token=EOS_TOKEN, unk_token=EOS_TOKEN,
                                   pad_token=EOS_TOKEN, model_max_length=max_length)


def new_gpt2(tokenizer: PreTrainedTokenizerFast, **shape: int) -> GPT2LMHeadModel:
    """A fresh GPT-2 of ``shape`` (n_layer, n_embd, n_head, n_positions) for ``tokenizer``."""
    return GPT2LMHeadModel(GPT2Config(
        vocab_size=len(tokenizer), **shape,
        # pure memorisation: dropout only slows it down
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))


def encode(tokenizer: PreTrainedTokenizerFast, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def collate(examples: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
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


@torch.no_grad()
def score_pairs(
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
        batch = collate([p + t for p, t in chunk], pad_id)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        log_probs = logits.log_softmax(dim=-1)
        for row, (prompt, target) in enumerate(chunk):
            positions = torch.arange(len(prompt) - 1, len(prompt) + len(target) - 1)
            span = log_probs[row, positions]
            hits.append(span.argmax(dim=-1).tolist() == target)
            probs.append(span[torch.arange(len(target)), target].sum().exp().item())
    return hits, probs


@contextlib.contextmanager
def training_environment(seed: int, threads: int = 1) -> Iterator[None]:
    """Seed every RNG and train on ``threads`` threads, restoring the caller's state after.

    One thread because these models are small enough that a second one gains little when the
    machine is idle, while next to other busy processes (test workers, a server) two
    spinning threads ran ten times slower; a fixed thread count also keeps the float
    reduction order, hence the trained weights, the same from run to run.
    """
    before = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        state_py, state_np = random.getstate(), np.random.get_state()
        try:
            torch.set_num_threads(threads)
            random.seed(seed)
            np.random.seed(seed)
            torch.manual_seed(seed)
            yield
        finally:
            random.setstate(state_py)
            np.random.set_state(state_np)
            torch.set_num_threads(before)


def _batches(n: int, size: int, generator: torch.Generator) -> Iterator[list[int]]:
    """Endless shuffled mini-batches of example indices, one permutation per epoch."""
    while True:
        order = torch.randperm(n, generator=generator).tolist()
        for start in range(0, n - size + 1, size):
            yield order[start : start + size]


def train_until(model: GPT2LMHeadModel, examples: Sequence[Sequence[int]], pad_id: int,
                schedule: Schedule, evaluate: Callable[[], dict[str, float]],
                met: Callable[[dict[str, float]], bool], label: str,
                progress: bool) -> dict[str, Any]:
    """Train on ``examples`` (token ids, eos included) until ``met(evaluate())`` or
    ``max_steps``; the last scores, the steps and the seconds taken."""
    generator = torch.Generator().manual_seed(schedule.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=schedule.lr, betas=(0.9, 0.98),
                                  weight_decay=schedule.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule.lr_factor)
    started = time.monotonic()
    scores: dict[str, float] = {}
    step = 0
    model.train()
    bar = tqdm(total=schedule.max_steps, desc=f"training {label}", unit="step",
               disable=not progress)
    size = min(schedule.batch_size, len(examples))
    try:
        for step, indices in enumerate(_batches(len(examples), size, generator), start=1):
            batch = collate([examples[i] for i in indices], pad_id)
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            bar.update(1)
            if step % schedule.eval_every and step < schedule.max_steps:
                continue
            scores = evaluate()
            bar.set_postfix(loss=f"{loss.item():.3f}")
            logger.debug("%s step %d loss %.4f scores %s", label, step, loss.item(), scores)
            if met(scores):
                break
            if step >= schedule.max_steps:
                logger.warning("%s missed its accuracy targets: %s", label, scores)
                break
    finally:
        bar.close()
    return {**scores, "train_steps": step, "train_seconds": round(time.monotonic() - started, 2)}
