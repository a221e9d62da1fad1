"""Which facts a base model actually knows: its greedy output on the prompt contains the answer.

Unlearning a fact the base model never produced is vacuous, and a retain set it never knew
measures nothing, so on a pretrained model the suites draw their unlearn, retain and related
facts from the ones this check passes (and report how many qualified). Results are cached per
model and prompt set under ``$LOKA_CACHE_DIR/bench-known/``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path

from benchmarks.methods import Budget, get_method
from memory_store.models.builtin.builder import cache_root

logger = logging.getLogger(__name__)

EXTRA_TOKENS = 8  # the answer may follow a few words ("The native language of X is French")
BATCH = 32


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", " ", text.lower())).strip()


def contains_answer(output: str, answer: str) -> bool:
    """The answer's words appear in the output, as whole words (case and punctuation
    ignored)."""
    a = _norm(answer)
    return bool(a) and f" {a} " in f" {_norm(output)} "


def _model_tag(model_dir: Path) -> str:
    h = hashlib.sha256(str(Path(model_dir).resolve()).encode())
    for name in ("config.json", "loka_model.json", "loka_bench_model.json"):
        f = Path(model_dir) / name
        if f.is_file():
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


class KnownFacts:
    """``mask(pairs)``: whether the base model at ``model_dir`` reproduces each answer."""

    def __init__(self, model_dir: Path, cache_dir: Path | None = None) -> None:
        self.model_dir = Path(model_dir)
        self.dir = (cache_dir or cache_root()) / "bench-known"
        self.tag = _model_tag(self.model_dir)
        self._served = None
        self.checked = 0

    def _model(self):
        if self._served is None:
            self._served = get_method("base")(self.model_dir, [], (), Budget(), 0, self.dir)
        return self._served

    def mask(self, pairs: Sequence[tuple[str, str]]) -> list[bool]:
        key = hashlib.sha256(json.dumps([self.tag, list(map(list, pairs))]).encode())
        path = self.dir / f"known-{key.hexdigest()[:24]}.json"
        if path.is_file():
            return json.loads(path.read_text())
        served = self._model()
        tok = served.tokenizer
        out: list[bool] = []
        for start in range(0, len(pairs), BATCH):
            chunk = pairs[start:start + BATCH]
            n = max(len(tok(a, add_special_tokens=False)["input_ids"]) for _, a in chunk)
            texts = served.generate([p for p, _ in chunk], n + EXTRA_TOKENS)
            out += [contains_answer(t, a) for t, (_, a) in zip(texts, chunk, strict=True)]
        self.checked += len(pairs)
        self.dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out))
        logger.info("base model knows %d of %d candidate facts", sum(out), len(out))
        return out

    def close(self) -> None:
        if self._served is not None:
            self._served.close()
            self._served = None
