"""``python -m benchmarks prepare --suite tofu --model smollm2 --authors N``: TOFU's first step on a
pretrained model: fine-tune it on the QA of TOFU authors ``0 .. N-1`` (both phrasings of every
question, plus the control questions, as the prepared base models are trained), and fine-tune
a retain-only twin per forget split on the same data without that split's forget authors.

Both are full fine-tunes of every weight with the same schedule (AdamW, linear warmup and
decay, TOFU's 5 epochs at learning rate 1e-5 by default), deterministic (one thread, seeded).
They are cached under ``$LOKA_CACHE_DIR/bench-models/tofu-ft-<model>-a<N>-<hash12>`` and
``...-retain-<split>-<hash12>``; the fine-tuned model's ``loka_bench_model.json`` names its
twins (``retain_models``: forget authors -> directory), which ``run --model <that directory>``
uses for forget quality (:mod:`benchmarks.tofu_eval`). Run with ``--scale cpu`` and
``--authors 10`` the twins leave out the authors that ``run --scale cpu`` forgets.

CPU cost (estimated, not run here): SmolLM2-135M, ~60 tokens an example, batches of 16: a
training step is about 6 x 135M x 960 = 7.8e11 FLOPs, 10-40 s on two shared cores. N = 10
authors are 200 QA x 2 phrasings + 40 control questions = 440 examples, 28 steps an epoch,
140 steps for 5 epochs: 25-90 min a model, plus its retain-only twin, i.e. about 1-3 hours.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from benchmarks import data as D
from benchmarks.prepare import INFO_FILE, _cached, _examples, evaluate_knowledge
from benchmarks.protocol import BaseCorpus, Suite
from benchmarks.suites import SCALES, _tofu
from memory_store.models.builtin.builder import cache_root
from memory_store.models.builtin.training import Schedule, train_until, training_environment

logger = logging.getLogger(__name__)

FINETUNE_VERSION = "1"


@dataclass(frozen=True)
class FinetuneSpec:
    """TOFU's fine-tuning recipe (5 epochs, lr 1e-5, weight decay 0.01), batch 16."""

    epochs: int = 5
    batch_size: int = 16
    lr: float = 1e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.2
    max_length: int = 256
    seed: int = 0


def tofu_suite(data_dir: Path, scale: str, authors: int) -> Suite:
    """The TOFU suite of ``scale`` over authors ``0 .. authors-1``."""
    z = {**SCALES[scale]["tofu"], "authors": authors}
    return _tofu("tofu", scale, data_dir, z, tuple(D.check_files(data_dir, "tofu")))


def _hash(payload: dict[str, Any]) -> str:
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def _payload(model_dir: Path, corpus: BaseCorpus, spec: FinetuneSpec) -> dict[str, Any]:
    return {"version": FINETUNE_VERSION, "model": str(model_dir.resolve()), "spec": asdict(spec),
            "corpus": [list(corpus.canonical), list(corpus.paraphrase), list(corpus.general)]}


def finetune(model_dir: Path, corpus: BaseCorpus, spec: FinetuneSpec, out_dir: Path,
             label: str, extra: dict[str, Any], progress: bool = True) -> None:
    """Fine-tune every weight of ``model_dir`` on ``corpus`` for ``spec.epochs`` epochs; save
    the model, its tokenizer and ``loka_bench_model.json`` into ``out_dir``."""
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    examples = _examples(tokenizer, corpus.all_pairs(), spec.max_length)
    per_epoch = max(1, len(examples) // min(spec.batch_size, len(examples)))
    steps = spec.epochs * per_epoch
    schedule = Schedule(spec.batch_size, spec.lr, spec.weight_decay,
                        max(1, math.ceil(spec.warmup_ratio * steps)), steps, per_epoch, spec.seed)
    evaluations = []  # stop after the last epoch's evaluation (no accuracy target)

    def done(scores: dict[str, float]) -> bool:
        evaluations.append(scores)
        return len(evaluations) >= spec.epochs

    with training_environment(spec.seed):
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), torch_dtype=torch.float32)
        before = evaluate_knowledge(model, tokenizer, corpus)
        stats = train_until(model, examples, tokenizer.pad_token_id, schedule,
                            lambda: evaluate_knowledge(model, tokenizer, corpus),
                            done, label, progress)
    model.eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    info = {"name": label, "from": str(model_dir), **extra, "finetune_version": FINETUNE_VERSION,
            "spec": asdict(spec), "n_examples": len(examples), "knowledge_before": before,
            "knowledge": stats, "n_params": sum(p.numel() for p in model.parameters()),
            "corpus_sizes": {"canonical": len(corpus.canonical),
                             "paraphrase": len(corpus.paraphrase),
                             "general": len(corpus.general)},
            "torch_version": torch.__version__}
    (out_dir / INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    logger.info("%s: canonical %.3f -> %.3f, paraphrase %.3f -> %.3f, %.0f s", label,
                before.get("acc_canonical", math.nan), stats.get("acc_canonical", math.nan),
                before.get("acc_paraphrase", math.nan), stats.get("acc_paraphrase", math.nan),
                stats["train_seconds"])


def ensure_finetuned(model_dir: Path, data_dir: Path, authors: int, scale: str = "cpu",
                     spec: FinetuneSpec | None = None, cache_dir: Path | None = None,
                     force: bool = False, progress: bool = True) -> Path:
    """``model_dir`` fine-tuned on TOFU authors ``0 .. authors-1``, and its retain-only twin
    per distinct forget split (cached); the fine-tuned model's directory."""
    spec = spec or FinetuneSpec()
    suite = tofu_suite(data_dir, scale, authors)
    assert suite.tofu is not None
    root = cache_root(cache_dir) / "bench-models"
    name = f"tofu-ft-{model_dir.name}-a{authors}"
    digest = _hash(_payload(model_dir, suite.corpus, spec))
    path = _cached(root / f"{name}-{digest}", force, lambda tmp: finetune(
        model_dir, suite.corpus, spec, tmp, name,
        {"role": "finetuned", "authors": list(range(authors)), "scale": scale}, progress))
    twins: dict[str, str] = {}
    for split, forget in suite.tofu.splits.items():
        corpus = suite.tofu.retain_corpora[split]
        twin = _cached(root / f"{name}-retain-{split}-{_hash(_payload(model_dir, corpus, spec))}",
                       force, lambda tmp, c=corpus, s=split, f=forget: finetune(
                           model_dir, c, spec, tmp, f"{name}-retain-{s}",
                           {"role": "retain_only", "forget_split": s, "forget_authors": list(f),
                            "scale": scale}, progress))
        twins[",".join(map(str, forget))] = str(twin)
    info = json.loads((path / INFO_FILE).read_text())
    if info.get("retain_models") != twins:
        info["retain_models"] = twins
        (path / INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return path
