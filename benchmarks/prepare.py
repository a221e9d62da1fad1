"""``python -m benchmarks prepare``: give each suite's base model the knowledge it will later
update.

No pretrained weights can be downloaded here, so, as TOFU fine-tunes its base on all fictitious
authors before unlearning, each suite trains a small GPT-2 from scratch (CPU, one thread,
deterministic) on every fact it will edit, unlearn or retain, in every phrasing the data has,
plus its locality set, with a byte-level BPE tokenizer trained on the same text. The model is
cached under ``$LOKA_CACHE_DIR/bench-models/<suite>-<scale>-<hash12>`` (the hash covers the
corpus and every setting) with ``loka_bench_model.json``: how well it learned each part, the
ceiling of "retain".

TOFU also gets a retain-only reference model per forget split (``...-retain-<split>-<hash12>``):
the same recipe, seed and tokenizer on the corpus without the forget authors' QA, which TOFU's
forget quality compares the unlearned model with (:mod:`benchmarks.tofu_eval`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

from benchmarks.protocol import BaseCorpus, Pair, Suite
from memory_store.files import file_lock
from memory_store.models.builtin.builder import cache_root
from memory_store.models.builtin.training import (
    Schedule,
    bpe_tokenizer,
    encode,
    new_gpt2,
    score_pairs,
    train_until,
    training_environment,
)

logger = logging.getLogger(__name__)

PREPARE_VERSION = "1"
INFO_FILE = "loka_bench_model.json"


@dataclass(frozen=True)
class BaseModelSpec:
    """Architecture and training schedule of a suite's base model."""

    n_layer: int = 4
    n_embd: int = 128
    n_head: int = 4
    n_positions: int = 128
    vocab_size: int = 2000
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    max_steps: int = 3000
    eval_every: int = 100
    seed: int = 0
    # stop at the first evaluation where greedy decoding reproduces this share of the
    # canonical / paraphrase / general pairs
    target_canonical: float = 0.99
    target_paraphrase: float = 0.95
    target_general: float = 0.95


SPECS: dict[str, dict[str, BaseModelSpec]] = {
    "small": {
        "tofu": BaseModelSpec(vocab_size=3000, max_steps=4000),
        "zsre": BaseModelSpec(max_steps=3000),
        "counterfact": BaseModelSpec(max_steps=2500),
        "pku": BaseModelSpec(max_steps=2500),
    },
    "full": {
        name: BaseModelSpec(n_layer=8, n_embd=512, n_head=8, n_positions=256, vocab_size=8000,
                            batch_size=32, lr=1e-3, warmup_steps=300, max_steps=30000,
                            eval_every=500)
        for name in ("tofu", "zsre", "counterfact", "pku")
    },
}


def model_hash(suite: Suite, spec: BaseModelSpec) -> str:
    payload = {"version": PREPARE_VERSION, "spec": asdict(spec),
               "corpus": [list(suite.corpus.canonical), list(suite.corpus.paraphrase),
                          list(suite.corpus.general)]}
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def model_path(suite: Suite, spec: BaseModelSpec, cache_dir: Path | None = None) -> Path:
    return (cache_root(cache_dir) / "bench-models" /
            f"{suite.name}-{suite.scale}-{model_hash(suite, spec)}")


def read_info(path: Path) -> dict[str, Any]:
    info = path / INFO_FILE
    return json.loads(info.read_text()) if info.is_file() else {}


def ensure_base_model(suite: Suite, cache_dir: Path | None = None, force: bool = False,
                      progress: bool = True) -> Path:
    """The cached base model of ``suite``, trained first if missing (or ``force``)."""
    spec = SPECS[suite.scale][suite.name]
    return _cached(model_path(suite, spec, cache_dir), force,
                   lambda tmp: _build(suite, spec, tmp, progress))


def reference_path(suite: Suite, split: str, cache_dir: Path | None = None) -> Path:
    """Where the retain-only reference model of TOFU split ``split`` is cached: named after
    the base model (whose tokenizer it shares) and hashed over its own corpus."""
    if suite.tofu is None:
        raise ValueError(f"{suite.name} has no TOFU forget splits")
    spec = SPECS[suite.scale][suite.name]
    corpus = suite.tofu.retain_corpora[split]
    payload = {"version": PREPARE_VERSION, "spec": asdict(spec), "base": model_hash(suite, spec),
               "forget": list(suite.tofu.splits[split]),
               "corpus": [list(corpus.canonical), list(corpus.paraphrase), list(corpus.general)]}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=True).encode())
    return (cache_root(cache_dir) / "bench-models" /
            f"{suite.name}-{suite.scale}-retain-{split}-{digest.hexdigest()[:12]}")


def ensure_reference_model(suite: Suite, split: str, cache_dir: Path | None = None,
                           force: bool = False, progress: bool = True) -> Path:
    """TOFU's retain-only reference model of ``split``: the base model's recipe (same
    architecture, schedule, seed and tokenizer) trained on the corpus without the split's
    forget authors; cached, trained first if missing (or ``force``)."""
    spec = SPECS[suite.scale][suite.name]
    base = ensure_base_model(suite, cache_dir, progress=progress)
    return _cached(reference_path(suite, split, cache_dir), force,
                   lambda tmp: _build_reference(suite, split, spec, base, tmp, progress))


def ensure_reference_models(suite: Suite, cache_dir: Path | None = None, force: bool = False,
                            progress: bool = True) -> dict[str, Path]:
    """The retain-only reference model of every forget split of a TOFU suite (none for the
    other suites), by split."""
    if suite.tofu is None:
        return {}
    return {split: ensure_reference_model(suite, split, cache_dir, force, progress)
            for split in suite.tofu.splits}


def _cached(path: Path, force: bool, build: Callable[[Path], None]) -> Path:
    """``path`` once ``build(tmp)`` has written it (atomically, under a lock), unless it is
    there already and not ``force``."""
    if (path / INFO_FILE).is_file() and not force:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    # one lock per model: parts of a run prepare different suites' models in parallel
    with file_lock(path.parent / f".{path.name}.lock"):
        if (path / INFO_FILE).is_file() and not force:
            return path
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
        try:
            build(tmp)
            tmp.chmod(0o755)
            if path.exists():
                shutil.rmtree(path)
            os.rename(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return path


# ---------------------------------------------------------------- training


def _examples(tokenizer, pairs: Sequence[Pair], limit: int) -> list[list[int]]:
    eos = tokenizer.eos_token_id
    out = []
    for p, t in pairs:
        ids = encode(tokenizer, p) + encode(tokenizer, t) + [eos]
        out.append(ids[:limit])
    return out


def evaluate_knowledge(model, tokenizer, corpus: BaseCorpus) -> dict[str, float]:
    """Share of each part of the corpus that greedy decoding reproduces exactly, and the
    mean probability of the answer."""
    was = model.training
    model.eval()
    out: dict[str, float] = {}
    try:
        for name in ("canonical", "paraphrase", "general"):
            pairs = getattr(corpus, name)
            if not pairs:
                continue
            enc = [(encode(tokenizer, p), encode(tokenizer, t)) for p, t in pairs]
            hits, probs = score_pairs(model, enc, tokenizer.pad_token_id)
            out[f"acc_{name}"] = sum(hits) / len(hits)
            out[f"prob_{name}"] = sum(probs) / len(probs)
    finally:
        model.train(was)
    return out


def _met(scores: dict[str, float], spec: BaseModelSpec) -> bool:
    return (scores.get("acc_canonical", 1.0) >= spec.target_canonical
            and scores.get("acc_paraphrase", 1.0) >= spec.target_paraphrase
            and scores.get("acc_general", 1.0) >= spec.target_general)


def _train(model, tokenizer, corpus: BaseCorpus, spec: BaseModelSpec, label: str,
           progress: bool) -> dict[str, Any]:
    schedule = Schedule(spec.batch_size, spec.lr, spec.weight_decay, spec.warmup_steps,
                        spec.max_steps, spec.eval_every, spec.seed)
    return train_until(model, _examples(tokenizer, corpus.all_pairs(), spec.n_positions),
                       tokenizer.pad_token_id, schedule,
                       lambda: evaluate_knowledge(model, tokenizer, corpus),
                       lambda scores: _met(scores, spec), f"the {label} base model", progress)


def _build(suite: Suite, spec: BaseModelSpec, out_dir: Path, progress: bool) -> None:
    texts = [p + t for p, t in suite.corpus.all_pairs()]
    tokenizer = bpe_tokenizer(texts, spec.vocab_size, spec.n_positions)
    _train_and_save(f"{suite.name}-{suite.scale}", suite, suite.corpus, spec, tokenizer, out_dir,
                    progress, {"hash": model_hash(suite, spec)})


def _build_reference(suite: Suite, split: str, spec: BaseModelSpec, base: Path, out_dir: Path,
                     progress: bool) -> None:
    assert suite.tofu is not None
    forget = suite.tofu.splits[split]
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    corpus = suite.tofu.retain_corpora[split]
    _train_and_save(f"{suite.name}-{suite.scale}-retain-{split}", suite, corpus, spec,
                    tokenizer, out_dir, progress,
                    {"role": "retain_only", "forget_split": split, "forget_authors": list(forget),
                     "base": base.name})


def _train_and_save(label: str, suite: Suite, corpus: BaseCorpus, spec: BaseModelSpec,
                    tokenizer, out_dir: Path, progress: bool, extra: dict[str, Any]) -> None:
    logger.info("training the %s model into %s", label, out_dir)
    with training_environment(spec.seed):
        model = new_gpt2(tokenizer, n_layer=spec.n_layer, n_embd=spec.n_embd, n_head=spec.n_head,
                         n_positions=spec.n_positions)
        stats = _train(model, tokenizer, corpus, spec, label, progress)
    model.eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    info = {"name": f"loka-bench-{label}", "suite": suite.name, "scale": suite.scale,
            **extra, "prepare_version": PREPARE_VERSION,
            "n_params": sum(p.numel() for p in model.parameters()),
            "vocab_size": len(tokenizer), "spec": asdict(spec),
            "corpus_sizes": {"canonical": len(corpus.canonical),
                             "paraphrase": len(corpus.paraphrase),
                             "general": len(corpus.general)},
            "knowledge": stats, "torch_version": torch.__version__}
    (out_dir / INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    logger.info("%s model: %d params, canonical %.3f, paraphrase %.3f, general %.3f, "
                "%.0f s", label, info["n_params"], stats.get("acc_canonical", float("nan")),
                stats.get("acc_paraphrase", float("nan")), stats.get("acc_general", float("nan")),
                stats["train_seconds"])
