"""The naive baseline: requests served one at a time, switching a PEFT adapter per request.

What one would write without LOKA's serving path: a ``PeftModel`` holding every adapter
(loaded once, so no disk reads are timed), ``set_adapter`` to the request's memory, then
``generate`` with Hugging Face's loop. It is told each request's memory (no routing cost) and
runs in the benchmark's process (no HTTP cost): both favour the baseline.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NaiveRun:
    requests: int
    tokens: int
    seconds: float
    latencies: tuple[float, ...]

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


class NaivePeft:
    """A frozen base model with PEFT adapters, one request at a time."""

    def __init__(self, model_dir: Path, adapters: Sequence[tuple[str, Path]]) -> None:
        started = time.perf_counter()
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        base = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
        first_name, first_dir = adapters[0]
        self.model = PeftModel.from_pretrained(base, str(first_dir), adapter_name=first_name)
        for name, directory in adapters[1:]:
            self.model.load_adapter(str(directory), adapter_name=name)
        self.model.eval()
        self.pad = self.tokenizer.pad_token_id
        if self.pad is None:
            self.pad = self.tokenizer.eos_token_id
        logger.info("naive baseline: %d PEFT adapters loaded in %.1f s", len(adapters),
                    time.perf_counter() - started)

    @torch.no_grad()
    def generate(self, prompt: str, memory: str, max_new_tokens: int) -> int:
        """Switch to ``memory``'s adapter and generate exactly ``max_new_tokens`` greedily
        (EOS ignored, as for the other systems); the number of new tokens."""
        self.model.set_adapter(memory)
        enc = self.tokenizer(prompt, return_tensors="pt")
        out = self.model.generate(**enc, max_new_tokens=max_new_tokens,
                                  min_new_tokens=max_new_tokens, do_sample=False,
                                  pad_token_id=self.pad)
        return int(out.shape[1] - enc["input_ids"].shape[1])

    @torch.no_grad()
    def generate_mixed(self, prompts: Sequence[str], memories: Sequence[str],
                       max_new_tokens: int) -> int:
        """PEFT's own mixed-adapter batching: one left-padded batch, row i with adapter
        ``memories[i]`` (``adapter_names``), exactly ``max_new_tokens`` each, greedy; the
        number of new tokens."""
        self.tokenizer.padding_side = "left"
        enc = self.tokenizer(list(prompts), return_tensors="pt", padding=True)
        out = self.model.generate(**enc, adapter_names=list(memories),
                                  max_new_tokens=max_new_tokens,
                                  min_new_tokens=max_new_tokens, do_sample=False,
                                  pad_token_id=self.pad)
        return int(out.shape[1] - enc["input_ids"].shape[1]) * len(prompts)

    def layout(self) -> str:
        """The adapters' PEFT configuration in words (rank, target modules, layers)."""
        import re

        cfg = next(iter(self.model.peft_config.values()))
        targets = sorted(cfg.target_modules)
        layers = sorted({int(m.group(1)) for t in targets
                         if (m := re.search(r"layers\.(\d+)\.", t))})
        kinds = sorted({t.rsplit(".", 1)[-1] for t in targets})
        where = f"layers {layers[0]}-{layers[-1]}" if layers else "every layer"
        return f"PEFT r={cfg.r}, lora_alpha={cfg.lora_alpha:g}, {'/'.join(kinds)} of {where}"

    def serve(self, work: Sequence[tuple[str, str]], max_new_tokens: int) -> NaiveRun:
        """Serve ``(prompt, memory)`` requests back to back (any concurrency queues here)."""
        latencies, tokens = [], 0
        start = time.perf_counter()
        for prompt, memory in work:
            t = time.perf_counter()
            tokens += self.generate(prompt, memory, max_new_tokens)
            latencies.append(time.perf_counter() - t)
        return NaiveRun(len(work), tokens, time.perf_counter() - start, tuple(latencies))
