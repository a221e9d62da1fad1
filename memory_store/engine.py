"""``Loka``: a frozen causal LM plus a versioned codebook of LoRA memories.

Reads (``route``, ``generate``) use an immutable ``_Live`` view of one published version and run
concurrently with one writer; writes (``update``, ``delete_*``, ``rollback``) are serialised, build
the next version off to the side, publish it atomically through the store, then swap the view.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from memory_store import keys as keymod
from memory_store import pieces_io
from memory_store.config import LokaConfig
from memory_store.errors import ConflictError, InvalidInput, ModelMismatch, NotFound, StoreError
from memory_store.generation import Generator, RowPlan, RunningBatch
from memory_store.ids import is_memory_id, is_piece_id
from memory_store.index import KeyIndex, retrieval_index
from memory_store.lora import AdapterWeights, adapter_hash, inject, load_adapter
from memory_store.model_access import describe, fingerprint, load_model
from memory_store.router import Gate, load_gate
from memory_store.store import Snapshot, Store
from memory_store.types import (
    CancelCheck,
    GenerationRequest,
    GenerationResult,
    MemoryInfo,
    Piece,
    PieceSpec,
    ProgressCallback,
    PublishRecord,
    RetainSpec,
    Route,
    UpdateOptions,
    UpdateResult,
    VersionInfo,
)

logger = logging.getLogger(__name__)

SMALL_MODEL_PARAMS = 50_000_000


@dataclass(frozen=True)
class StreamChunk:
    text: str
    result: GenerationResult | None = None


@dataclass(frozen=True)
class Score:
    logprob: float  # summed log-probability of the target tokens
    token_accuracy: float  # fraction of target tokens that are the argmax
    memory_id: str | None


@dataclass(frozen=True)
class _Live:
    """An immutable, fully loaded view of one published version."""

    snapshot: Snapshot
    index: KeyIndex
    gate: Gate | None

    @property
    def version(self) -> int:
        return self.snapshot.version


class AdapterCache:
    """LRU cache of materialised adapters keyed by (memory id, content hash)."""

    def __init__(self, root: Path, capacity: int = 256) -> None:
        self.root = root
        self.capacity = capacity
        self._items: OrderedDict[tuple[str, str], AdapterWeights] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, memory_id: str, content_hash: str, adapter_dir: str) -> AdapterWeights:
        key = (memory_id, content_hash)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        try:
            weights = load_adapter(self.root / adapter_dir)
        except Exception as exc:  # missing or corrupted files: name them, never serve junk
            raise StoreError(f"adapter of memory {memory_id} at {adapter_dir} is unreadable "
                             f"({exc}); run `loka store check`") from exc
        # a flipped bit in the weights still loads: only the content hash tells
        if adapter_hash(weights) != content_hash:
            raise StoreError(f"adapter of memory {memory_id} at {adapter_dir} does not match "
                             "its content hash (a corrupted file); run `loka store check`")
        with self._lock:
            self._items[key] = weights
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return weights

    def __len__(self) -> int:
        return len(self._items)


class ServingBatch:
    """Continuous batching on the engine (``memory_store.generation.RunningBatch``): requests
    join between decoding steps, each routed on the codebook version live when it joins, and
    leave as soon as they finish. One caller at a time."""

    def __init__(self, loka: Loka) -> None:
        self._loka = loka
        self._rows = RunningBatch(loka.generator)

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def can_join(self) -> bool:
        return self._rows.can_join

    def add(self, requests: Sequence[GenerationRequest], tags: Sequence[Any]) -> None:
        """Validate, route and prefill ``requests`` (``tags`` name them in ``step``'s results).
        Raises as ``generate`` does; then none of them joined."""
        loka = self._loka
        live = loka._live
        plans = loka._plans(live, requests)
        if plans:
            self._rows.add(plans, loka._router_fn(live), [(live, t) for t in tags])

    def step(self) -> list[tuple[Any, GenerationResult]]:
        """One token for every running request; the (tag, result) of those that finished."""
        return [(tag, self._loka._result(live, row)) for (live, tag), row in self._rows.step()]

    def tags(self) -> list[Any]:
        """Tags of the running requests."""
        return [tag for _, tag in self._rows.tags()]


class Loka:
    """The LOKA engine: see ``docs/engine-api.md``."""

    def __init__(self, model, tokenizer, model_name: str, store: Store, config: LokaConfig,
                 background_prompts: Sequence[str] = (), adapter_cache_size: int = 256) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.store = store
        self.config = config
        self.layout = describe(model, config.lora, config.keys)
        inject(model, self.layout)
        self.generator = Generator(model, tokenizer, self.layout, config.keys.pooling)
        self.adapters = AdapterCache(store.root, adapter_cache_size)
        self._write_lock = threading.Lock()
        self._centre = self._load_centre()
        self._background = tuple(dict.fromkeys(background_prompts))
        self._background_keys: np.ndarray | None = None
        self._live = self._load_live(None)
        # computed at open (or read from the store), not during the first update
        self.background_keys()

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, store_dir: Path | str, model: str | Path | None = None,
             config: LokaConfig | None = None, dtype: str = "float32", device: str = "cpu",
             progress: bool = False, background_prompts: Sequence[str] | None = None,
             adapter_cache_size: int = 256, threads: int | None = None) -> Loka:
        """Open (or create) the store at ``store_dir`` on ``model`` (None: the built-in model).

        ``threads`` sets torch's intra-op threads for the process; None picks 1 for models under
        50M parameters, where thread synchronisation costs more than it saves (a 20+20 update
        on the built-in model measured 5.7 s with 1 thread and 70 s with 2 on a loaded 2-core
        machine), and 1 on machines with at most 2 cores (SmolLM2-135M training steps on the
        shared 2-core machine: 4 steps 27 s wall / 3.1 CPU s with 1 thread against 122 s /
        26 CPU s with 2); torch's default otherwise."""
        if model is None:
            from memory_store.default_model import ensure_default_model

            model = ensure_default_model(progress=progress)
        if background_prompts is None and _is_default_model(model):
            background_prompts = default_background()
        # the store first: a read-only, full or corrupted store fails before a long model load
        store = Store(Path(store_dir))
        try:
            hf_model, tokenizer = load_model(model, dtype=dtype, device=device)
        except BaseException:
            store.close()
            raise
        if threads is None and (hf_model.num_parameters() < SMALL_MODEL_PARAMS
                                or (os.cpu_count() or 1) <= 2):
            threads = 1
        if threads is not None:
            torch.set_num_threads(threads)
        fp = fingerprint(hf_model)
        stored_fp = store.get_meta("model_fingerprint")
        if stored_fp is None:
            store.set_meta("model_fingerprint", fp)
            store.set_meta("model_name", str(model))
        elif stored_fp != fp:
            raise ModelMismatch(
                f"store {store_dir} was created with model {store.get_meta('model_name')!r}, "
                f"not {str(model)!r}", field="model")
        config = _merge_config(store, config)
        return cls(hf_model, tokenizer, str(model), store, config,
                   background_prompts or keymod.CALIBRATION_PROMPTS, adapter_cache_size)

    def _load_centre(self) -> torch.Tensor:
        blob = self.store.get_blob("key_centre")
        if blob is None:
            raw = keymod.raw_keys(self.model, self.tokenizer, self.layout,
                                  keymod.CALIBRATION_PROMPTS, self.config.keys.pooling)
            centre = raw.mean(0)
            self.store.set_blob("key_centre", centre.numpy().astype(np.float32).tobytes())
            return centre
        return torch.from_numpy(np.frombuffer(blob, dtype=np.float32).copy())

    def _load_live(self, version: int | None) -> _Live:
        snap = self.store.snapshot(version, self.layout.hidden_size)
        index = retrieval_index(snap.memories.values(), snap.pieces.values(),
                                self.config.router.retrieval, self.config.index,
                                self.layout.hidden_size)
        gate = None
        if snap.gate_file and self.config.router.enabled:
            try:
                gate = load_gate(self.store.root / snap.gate_file, self.layout.hidden_size,
                                 self.config.router.hidden)
            except Exception as exc:
                raise StoreError(f"router weights {snap.gate_file} of version {snap.version} "
                                 f"are unreadable ({exc}); run `loka store check`") from exc
        missing = [m.adapter_dir for m in snap.memories.values()
                   if not (self.store.root / m.adapter_dir).is_dir()]
        if missing:
            raise StoreError(f"version {snap.version} names {len(missing)} missing adapter "
                             f"folders (first: {missing[0]}); run `loka store check`")
        return _Live(snap, index, gate)

    # ------------------------------------------------------------------ properties
    @property
    def version(self) -> int:
        return self._live.version

    @property
    def store_path(self) -> Path:
        return self.store.root

    @property
    def db_path(self) -> Path:
        return self.store.db_path

    def close(self) -> None:
        self.store.close()

    # ------------------------------------------------------------------ keys and routing
    def keys(self, prompts: Sequence[str]) -> np.ndarray:
        """(N, d) unit keys of ``prompts`` on the frozen model."""
        return keymod.compute_keys(self.model, self.tokenizer, self.layout, list(prompts),
                                   self._centre, self.config.keys.pooling)

    def background_keys(self) -> np.ndarray:
        """Keys of the background prompts: computed once per store and set of prompts (kept
        in the store, so a restarted service does not recompute them on its first update)."""
        if self._background_keys is None:
            self._background_keys = self._stored_background_keys()
        return self._background_keys

    def _stored_background_keys(self) -> np.ndarray:
        import hashlib

        digest = hashlib.sha256("\x00".join(self._background).encode()).hexdigest()[:16]
        name = f"background_keys_{digest}"
        dim = self.layout.hidden_size
        blob = self.store.get_blob(name)
        if blob is not None and len(blob) == 4 * dim * len(self._background):
            return np.frombuffer(blob, dtype=np.float32).reshape(-1, dim).copy()
        keys = self.keys(self._background)
        try:
            self.store.set_blob(name, keys.astype(np.float32).tobytes())
        except (StoreError, OSError, sqlite3.Error):  # a read-only store still serves
            logger.warning("cannot keep the background keys in the store")
        return keys

    def _route_keys(self, live: _Live, unit: np.ndarray) -> list[Route]:
        if len(live.index) == 0:
            return [Route(None, 0.0, None) for _ in unit]
        sims, names = live.index.search(unit, 1)
        if live.gate is not None:
            with torch.no_grad():
                gates = live.gate(torch.from_numpy(unit), torch.from_numpy(sims[:, 0])).numpy()
        else:
            gates = np.ones(len(unit), dtype=np.float32)
        r = self.config.router
        routes = []
        for g, s, name in zip(gates, sims[:, 0], names, strict=True):
            chosen = name[0] if g >= r.threshold and s >= r.min_similarity else None
            routes.append(Route(chosen, float(g), float(s)))
        return routes

    def route(self, prompts: Sequence[str]) -> list[Route]:
        """Which memory would serve each prompt (None: the base model)."""
        for i, p in enumerate(prompts):
            pieces_io._text(p, f"prompts[{i}]")
        live = self._live
        return self._route_keys(live, self.keys(prompts))

    def _adapter(self, live: _Live, memory_id: str) -> AdapterWeights:
        m = live.snapshot.memories[memory_id]
        return self.adapters.get(m.id, m.content_hash, m.adapter_dir)

    # ------------------------------------------------------------------ generation
    def _plans(self, live: _Live, requests: Sequence[GenerationRequest]) -> list[RowPlan]:
        plans = []
        for i, req in enumerate(requests):
            pieces_io._text(req.prompt, f"requests[{i}].prompt")
            if req.max_new_tokens < 1:
                raise InvalidInput("max_new_tokens must be >= 1", field="max_new_tokens")
            plan = RowPlan(req.prompt, req.max_new_tokens, req.temperature, req.top_p,
                           tuple(req.stop), req.seed)
            if req.memory == "auto":
                pass
            elif req.memory == "none":
                plan.auto, plan.route = False, Route(None, 0.0, None)
            elif is_memory_id(req.memory) and req.memory in live.snapshot.memories:
                plan.auto = False
                plan.adapter = self._adapter(live, req.memory)
                plan.route = Route(req.memory, 1.0, None)
            else:
                raise NotFound(f"no memory {req.memory!r} in codebook version {live.version}",
                               field="memory")
            plans.append(plan)
        return plans

    def _router_fn(self, live: _Live) -> Callable:
        def router(raw: torch.Tensor) -> list[tuple[Route, AdapterWeights | None]]:
            unit = keymod.normalise(raw.float().cpu(), self._centre).numpy()
            routes = self._route_keys(live, unit)
            return [(r, self._adapter(live, r.memory_id) if r.memory_id else None)
                    for r in routes]
        return router

    def _result(self, live: _Live, row) -> GenerationResult:
        route = row.route or Route(None, 0.0, None)
        return GenerationResult(row.text, route.memory_id, route.gate, route.similarity,
                                live.version, row.prompt_tokens, len(row.token_ids),
                                row.finish_reason)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Generate for a mixed batch: each row with its own memory, routed or fixed."""
        live = self._live  # one version for the whole batch
        plans = self._plans(live, requests)
        if not plans:
            return []
        rows = self.generator.generate(plans, self._router_fn(live))
        return [self._result(live, r) for r in rows]

    def batch(self) -> ServingBatch:
        """A continuous batch for a serving loop: requests join between decoding steps."""
        return ServingBatch(self)

    def generate_stream(self, request: GenerationRequest) -> Iterator[StreamChunk]:
        """Yield text deltas; the last chunk carries the full result."""
        live = self._live
        plans = self._plans(live, [request])
        hold = max((len(s) for s in request.stop), default=1) - 1
        sent = 0
        row = None
        for rows in self.generator.stream(plans, self._router_fn(live)):
            row = rows[0]
            safe = len(row.text) if row.done else max(len(row.text) - hold, 0)
            text = row.text[:safe]
            if text.endswith("\ufffd") and not row.done:  # incomplete UTF-8 sequence
                text = text[:-1]
            if len(text) > sent:
                yield StreamChunk(text[sent:])
                sent = len(text)
        if row is not None and len(row.text) > sent:
            yield StreamChunk(row.text[sent:])
        yield StreamChunk("", self._result(live, row))

    @torch.no_grad()
    def score(self, pairs: Sequence[tuple[str, str]], memory: str = "auto",
              batch_size: int = 32) -> list[Score]:
        """Teacher-forced scores of ``target`` after ``prompt`` on the served model (each
        prompt routed as generation would route it): summed log-probability and token
        accuracy (EasyEdit's edit metric)."""
        from memory_store import losses
        from memory_store.lora import BatchState, use_state

        live = self._live
        out: list[Score] = []
        for start in range(0, len(pairs), batch_size):
            chunk = list(pairs[start:start + batch_size])
            prompts = [p for p, _ in chunk]
            if memory == "auto":
                routes = self._route_keys(live, self.keys(prompts))
            else:
                plan = self._plans(live, [GenerationRequest(prompts[0], memory=memory)])[0]
                routes = [plan.route] * len(chunk)
            adapters = [self._adapter(live, r.memory_id) if r.memory_id else None
                        for r in routes]
            batch = losses.tokenize_pairs(self.tokenizer, chunk, self.model.device)
            with use_state(BatchState(adapters, self.model.dtype, self.model.device)):
                logits = losses.forward_logits(self.model, batch)
            logp = losses.sequence_logprob(logits, batch.labels)
            acc = losses.target_accuracy(logits, batch.labels)
            out += [Score(float(lp), float(a), r.memory_id)
                    for lp, a, r in zip(logp, acc, routes, strict=True)]
        return out

    # ------------------------------------------------------------------ reading the codebook
    def memories(self) -> list[MemoryInfo]:
        live = self._live
        return [self._memory_info(live, m) for m in live.snapshot.memories.values()]

    def memory(self, memory_id: str) -> MemoryInfo:
        live = self._live
        if not is_memory_id(memory_id) or memory_id not in live.snapshot.memories:
            raise NotFound(f"no memory {memory_id!r}", field="memory_id")
        return self._memory_info(live, live.snapshot.memories[memory_id])

    def _memory_info(self, live: _Live, m) -> MemoryInfo:
        pieces = tuple(p.id for p in live.snapshot.pieces.values() if p.memory_id == m.id)
        return MemoryInfo(m.id, m.kind, m.content_hash, pieces, m.conflict, m.key_stats,
                          m.bucket, m.created_at, m.added_in, m.train_loss)

    def pieces(self) -> list[Piece]:
        return [_piece(p) for p in self._live.snapshot.pieces.values()]

    def piece(self, piece_id: str) -> Piece:
        snap = self._live.snapshot
        if not is_piece_id(piece_id) or piece_id not in snap.pieces:
            raise NotFound(f"no knowledge piece {piece_id!r}", field="piece_id")
        return _piece(snap.pieces[piece_id])

    def versions(self) -> list[VersionInfo]:
        return self.store.versions()

    def codebook_info(self) -> dict:
        live = self._live
        return {
            "version": live.version,
            "n_memories": len(live.snapshot.memories),
            "n_pieces": len(live.snapshot.pieces),
            "n_versions": len(self.store.versions()),
            "index": live.index.kind,
            "adapters_cached": len(self.adapters),
            "model": self.model_name,
            "key_layer": self.layout.key_layer,
            "lora_layers": list(self.layout.lora_layers),
        }

    # ------------------------------------------------------------------ writing
    def validate_pieces(self, pieces: Sequence[PieceSpec], retain: Sequence[RetainSpec] = ()
                        ) -> None:
        pieces_io.validate(pieces, retain)

    def update(self, pieces: Sequence[PieceSpec], retain: Sequence[RetainSpec] = (),
               options: UpdateOptions | None = None, progress: ProgressCallback | None = None,
               should_cancel: CancelCheck | None = None,
               on_publish: PublishRecord | None = None) -> UpdateResult:
        """Apply a batch of edits and unlearning requests; publishes one new version.

        ``on_publish(result)`` returns SQL statements on the caller's own tables of ``db_path``
        that are committed in the transaction that publishes the version (a job marked done
        together with its effect, so that a crash can never leave one without the other)."""
        from memory_store.updater import Updater

        pieces_io.validate(pieces, retain)
        with self._write_lock:
            plan = Updater(self, self._live.snapshot, options, progress, should_cancel,
                           on_publish)
            return self._commit(plan.apply(pieces, retain), plan)

    def delete_piece(self, piece_id: str, progress: ProgressCallback | None = None,
                     should_cancel: CancelCheck | None = None,
                     on_publish: PublishRecord | None = None) -> UpdateResult:
        """Revert one piece: its memory is retrained without it (or dropped if emptied)."""
        from memory_store.updater import Updater

        with self._write_lock:
            snap = self._live.snapshot
            if not is_piece_id(piece_id) or piece_id not in snap.pieces:
                raise NotFound(f"no knowledge piece {piece_id!r}", field="piece_id")
            plan = Updater(self, snap, None, progress, should_cancel, on_publish)
            return self._commit(plan.remove_pieces([piece_id], f"delete piece {piece_id}"), plan)

    def delete_memory(self, memory_id: str) -> UpdateResult:
        """Drop a memory and every piece it holds."""
        from memory_store.updater import Updater

        with self._write_lock:
            snap = self._live.snapshot
            if not is_memory_id(memory_id) or memory_id not in snap.memories:
                raise NotFound(f"no memory {memory_id!r}", field="memory_id")
            plan = Updater(self, snap, None, None, None)
            return self._commit(plan.drop_memory(memory_id), plan)

    def rollback(self, version: int) -> UpdateResult:
        """Publish a new version whose codebook equals ``version``'s."""
        with self._write_lock:
            current = self._live.snapshot
            if not isinstance(version, int) or version < 0:
                raise InvalidInput("version must be a non-negative integer", field="version")
            if version > current.version:
                raise NotFound(f"no codebook version {version}", field="version")
            if version == current.version:
                raise ConflictError(f"version {version} is already current", field="version")
            old = self.store.snapshot(version, self.layout.hidden_size)
            new_version = self.store.next_version()
            self.store.publish(new_version, old.memories.values(), old.pieces.values(),
                               old.retain, gate_file=old.gate_file, index_file=old.index_file,
                               reason=f"rollback to {version}")
            self._live = self._load_live(new_version)
            removed = tuple(sorted(set(current.memories) - set(old.memories)))
            restored = tuple(sorted(set(old.memories) - set(current.memories)))
            return UpdateResult(new_version, restored, (), removed,
                                tuple(sorted(set(old.pieces) - set(current.pieces))),
                                tuple(sorted(set(current.pieces) - set(old.pieces))))

    def _commit(self, result: UpdateResult, plan) -> UpdateResult:
        self._live = self._load_live(result.codebook_version)
        logger.info("published codebook version %d (%d memories)", result.codebook_version,
                    len(self._live.snapshot.memories))
        return result


def _piece(p) -> Piece:
    return Piece(p.id, p.kind, p.prompt, p.target, p.paraphrases, p.memory_id, p.created_at,
                 p.added_in)


def default_background() -> tuple[str, ...]:
    """Hard-negative prompts for the built-in model: the facts it knows, plus general text."""
    from memory_store.default_model.corpus import FACTS, GENERAL_PROMPTS

    # one phrasing per fact: the other phrasings stay unseen, as paraphrases are in real use
    return tuple(f.prompts[0] for f in FACTS) + tuple(GENERAL_PROMPTS)


def _is_default_model(model: str | Path) -> bool:
    marker = Path(model) / "loka_model.json"
    try:
        return marker.is_file() and json.loads(marker.read_text()).get("name") == "loka-default"
    except (OSError, ValueError):
        return False


def _merge_config(store: Store, config: LokaConfig | None) -> LokaConfig:
    """The store fixes the key and LoRA shape; the rest may change between runs."""
    raw = store.get_meta("config")
    if raw is None:
        config = config or LokaConfig()
        store.set_meta("config", config.model_dump_json())
        return config
    stored = LokaConfig.model_validate_json(raw)
    if config is None:
        return stored
    if config.keys != stored.keys or config.lora != stored.lora:
        raise ModelMismatch("the store was created with other key/LoRA settings "
                            f"({stored.keys}, {stored.lora})", field="config")
    store.set_meta("config", config.model_dump_json())
    return config


def timed() -> Callable[[], float]:
    start = time.perf_counter()
    return lambda: time.perf_counter() - start
