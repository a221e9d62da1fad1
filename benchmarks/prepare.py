"""``python -m benchmarks prepare``: give each suite's base model the knowledge it will later
update.

No pretrained weights can be downloaded here, so, as TOFU fine-tunes its base on all fictitious
authors before unlearning, each suite trains a small GPT-2 from scratch (CPU, one thread,
deterministic) on every fact it will edit, unlearn or retain, in every phrasing the data has,
plus its locality set, with a byte-level BPE tokenizer trained on the same text. The model is
cached under ``$LOKA_CACHE_DIR/bench-models/<suite>-<scale>-<hash12>`` (the hash covers the
corpus and every setting) with ``loka_bench_model.json``: how well it learned each part, the
ceiling of "retain".
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from tqdm.auto import tqdm
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from benchmarks.protocol import BaseCorpus, Pair, Suite
from memory_store.models.builtin.builder import (
    EOS_TOKEN,
    _cache_root,
    _collate,
    _encode,
    _file_lock,
    _score_pairs,
    _training_environment,
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
    return (_cache_root(cache_dir) / "bench-models" /
            f"{suite.name}-{suite.scale}-{model_hash(suite, spec)}")


def read_info(path: Path) -> dict[str, Any]:
    info = path / INFO_FILE
    return json.loads(info.read_text()) if info.is_file() else {}


def ensure_base_model(suite: Suite, cache_dir: Path | None = None, force: bool = False,
                      progress: bool = True) -> Path:
    """The cached base model of ``suite``, trained first if missing (or ``force``)."""
    spec = SPECS[suite.scale][suite.name]
    path = model_path(suite, spec, cache_dir)
    if (path / INFO_FILE).is_file() and not force:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    # one lock per model: parts of a run prepare different suites' models in parallel
    with _file_lock(path.parent / f".{path.name}.lock"):
        if (path / INFO_FILE).is_file() and not force:
            return path
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
        try:
            _build(suite, spec, tmp, progress)
            tmp.chmod(0o755)
            if path.exists():
                shutil.rmtree(path)
            os.rename(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return path


# ---------------------------------------------------------------- tokenizer


def build_bpe_tokenizer(texts: Sequence[str], vocab_size: int,
                        max_length: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``texts``, configured like the built-in model's
    (no prefix space, so a prompt's tokens followed by its target's match the joined text)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2,
                                  special_tokens=[EOS_TOKEN],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(list(texts), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS_TOKEN,
                                   bos_token=EOS_TOKEN, unk_token=EOS_TOKEN,
                                   pad_token=EOS_TOKEN, model_max_length=max_length)


# ---------------------------------------------------------------- training


def _examples(tokenizer, pairs: Sequence[Pair], limit: int) -> list[list[int]]:
    eos = tokenizer.eos_token_id
    out = []
    for p, t in pairs:
        ids = _encode(tokenizer, p) + _encode(tokenizer, t) + [eos]
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
            enc = [(_encode(tokenizer, p), _encode(tokenizer, t)) for p, t in pairs]
            hits, probs = _score_pairs(model, enc, tokenizer.pad_token_id)
            out[f"acc_{name}"] = sum(hits) / len(hits)
            out[f"prob_{name}"] = sum(probs) / len(probs)
    finally:
        model.train(was)
    return out


def _met(scores: dict[str, float], spec: BaseModelSpec) -> bool:
    return (scores.get("acc_canonical", 1.0) >= spec.target_canonical
            and scores.get("acc_paraphrase", 1.0) >= spec.target_paraphrase
            and scores.get("acc_general", 1.0) >= spec.target_general)


def _batches(n: int, size: int, gen: torch.Generator) -> Iterator[list[int]]:
    while True:
        order = torch.randperm(n, generator=gen).tolist()
        for start in range(0, n - size + 1, size):
            yield order[start:start + size]


def _train(model, tokenizer, corpus: BaseCorpus, spec: BaseModelSpec, label: str,
           progress: bool) -> dict[str, Any]:
    examples = _examples(tokenizer, corpus.all_pairs(), spec.n_positions)
    gen = torch.Generator().manual_seed(spec.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, betas=(0.9, 0.98),
                            weight_decay=spec.weight_decay)

    def factor(step: int) -> float:
        if step < spec.warmup_steps:
            return (step + 1) / spec.warmup_steps
        return max(0.1, 1.0 - 0.9 * (step - spec.warmup_steps) /
                   max(1, spec.max_steps - spec.warmup_steps))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    started = time.monotonic()
    scores: dict[str, float] = {}
    step = 0
    model.train()
    bar = tqdm(total=spec.max_steps, desc=f"prepare {label}", unit="step", disable=not progress)
    try:
        size = min(spec.batch_size, len(examples))
        for step, idx in enumerate(_batches(len(examples), size, gen), start=1):
            batch = _collate([examples[i] for i in idx], tokenizer.pad_token_id)
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            bar.update(1)
            if step % spec.eval_every and step < spec.max_steps:
                continue
            scores = evaluate_knowledge(model, tokenizer, corpus)
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=scores.get("acc_canonical", 0.0))
            if _met(scores, spec):
                break
            if step >= spec.max_steps:
                logger.warning("%s: base model missed its accuracy targets: %s", label, scores)
                break
    finally:
        bar.close()
    return {**scores, "train_steps": step, "train_seconds": round(time.monotonic() - started, 1)}


def _build(suite: Suite, spec: BaseModelSpec, out_dir: Path, progress: bool) -> None:
    label = f"{suite.name}-{suite.scale}"
    logger.info("training the %s base model into %s", label, out_dir)
    texts = [p + t for p, t in suite.corpus.all_pairs()]
    tokenizer = build_bpe_tokenizer(texts, spec.vocab_size, spec.n_positions)
    with _training_environment(spec.seed):
        model = GPT2LMHeadModel(GPT2Config(
            vocab_size=len(tokenizer), n_layer=spec.n_layer, n_embd=spec.n_embd,
            n_head=spec.n_head, n_positions=spec.n_positions, resid_pdrop=0.0, embd_pdrop=0.0,
            attn_pdrop=0.0, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
        stats = _train(model, tokenizer, suite.corpus, spec, label, progress)
    model.eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    info = {"name": f"loka-bench-{label}", "suite": suite.name, "scale": suite.scale,
            "hash": model_hash(suite, spec), "prepare_version": PREPARE_VERSION,
            "n_params": sum(p.numel() for p in model.parameters()),
            "vocab_size": len(tokenizer), "spec": asdict(spec),
            "corpus_sizes": {"canonical": len(suite.corpus.canonical),
                             "paraphrase": len(suite.corpus.paraphrase),
                             "general": len(suite.corpus.general)},
            "knowledge": stats, "torch_version": torch.__version__}
    (out_dir / INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    logger.info("%s base model: %d params, canonical %.3f, paraphrase %.3f, general %.3f, "
                "%.0f s", label, info["n_params"], stats.get("acc_canonical", float("nan")),
                stats.get("acc_paraphrase", float("nan")), stats.get("acc_general", float("nan")),
                stats["train_seconds"])
