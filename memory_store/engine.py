"""``Loka``: a frozen causal LM plus a versioned codebook of LoRA memories.

A thin facade that wires the parts: the model and where LoRA hooks into it (``models``), keys
(``keys``), the store and the loaded version (``codebook``), routing (``routing``), serving
(``serving``) and updates (``update``). Reads use an immutable ``LiveVersion`` of one
published version and run concurrently with one writer; writes (``update``, ``delete_*``,
``rollback``) are serialised, build the next version off to the side, publish it atomically
through the store, then swap the live version.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from memory_store import keys as keymod
from memory_store import pieces_io
from memory_store.codebook.live import LiveVersion, load_live
from memory_store.codebook.store import Store
from memory_store.config import LokaConfig
from memory_store.errors import ConflictError, HeadMoved, InvalidInput, ModelMismatch, NotFound
from memory_store.general_prompts import general_prompts, load_user_prompts, render
from memory_store.ids import is_memory_id, is_piece_id
from memory_store.keys import CALIBRATION_PROMPTS, KeyEncoder, key_centre
from memory_store.lora.layer import inject
from memory_store.models import resolve_model
from memory_store.models.access import describe, fingerprint, load_model
from memory_store.models.builtin import FACTS, GENERAL_PROMPTS
from memory_store.models.chat import has_template, user_prompt
from memory_store.models.smollm2 import cache_root
from memory_store.serving.adapters import AdapterCache
from memory_store.serving.batching import BatchGenerator
from memory_store.serving.runtime import Score, ServingBatch, ServingRuntime, StreamChunk
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
from memory_store.update.mapping import pin_lsh_settings, pinned_lsh
from memory_store.update.updater import Background, RetryContext, UpdateContext, Updater

__all__ = ["Loka", "Score", "ServingBatch", "StreamChunk"]

logger = logging.getLogger(__name__)

SMALL_MODEL_PARAMS = 50_000_000
# re-plans of one change when other writers keep publishing first
MAX_REPLANS = 20
# tokens the trainer's unlearning verify rounds generate after a prompt (``trainer._leaks``)
VERIFY_TOKENS = 16


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
        self.encoder = KeyEncoder(model, tokenizer, self.layout, config.keys.pooling,
                                  self._centre())
        self.adapters = AdapterCache(store.root, adapter_cache_size)
        self.serving = ServingRuntime(model, tokenizer, self.layout, self.encoder, self.adapters)
        self.background = Background(background_prompts, self.encoder, cache_root() / "keys")
        lsh = pinned_lsh(store, config.mapping.lsh_bits, config.trainer.seed,
                         self.layout.hidden_size)
        self._update_context = UpdateContext(model, tokenizer, model_name, self.layout, config,
                                             self.encoder, self.background, store, lsh)
        self._write_lock = threading.Lock()
        self._live_lock = threading.Lock()  # one reload of the view at a time
        self._live = self._load(None)

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, store_dir: Path | str, model: str | Path | None = None,
             config: LokaConfig | None = None, dtype: str = "float32", device: str = "cpu",
             progress: bool = False, background_prompts: Sequence[str] | None = None,
             adapter_cache_size: int = 256, threads: int | None = None,
             database_url: str | None = None) -> Loka:
        """Open (or create) the store at ``store_dir`` on ``model`` (None: the built-in model).

        ``database_url`` (default: ``LOKA_DATABASE_URL``) puts the codebook's tables in
        PostgreSQL; the files stay in ``store_dir`` (a volume shared by every process).

        ``threads`` sets torch's intra-op threads for the process; None picks 1 for models under
        50M parameters, where thread synchronisation costs more than it saves (a 20+20 update
        on the built-in model measured 5.7 s with 1 thread and 70 s with 2 on a loaded 2-core
        machine), and 1 on machines with at most 2 cores (SmolLM2-135M training steps on the
        shared 2-core machine: 4 steps 27 s wall / 3.1 CPU s with 1 thread against 122 s /
        26 CPU s with 2); torch's default otherwise."""
        model = resolve_model(model, progress=progress)
        if background_prompts is None and _is_default_model(model):
            background_prompts = default_background()
        # the store first: a read-only, full or corrupted store fails before a long model load
        if database_url is None:
            database_url = os.environ.get("LOKA_DATABASE_URL") or None
        store = Store(Path(store_dir), database_url=database_url)
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
        if stored_fp is None:  # processes starting together on a new store agree on one
            store.set_meta_once("model_name", str(model))
            stored_fp = store.set_meta_once("model_fingerprint", fp)
        if stored_fp != fp:
            raise ModelMismatch(
                f"store {store_dir} was created with model {store.get_meta('model_name')!r}, "
                f"not {str(model)!r}", field="model")
        config = _merge_config(store, config)
        if background_prompts is None:
            background_prompts = general_background(
                tokenizer, os.environ.get("LOKA_BACKGROUND_PROMPTS") or None)
        return cls(hf_model, tokenizer, str(model), store, config,
                   background_prompts or CALIBRATION_PROMPTS, adapter_cache_size)

    def _centre(self) -> torch.Tensor:
        """The store's key centre, computed and saved when the store is created."""
        blob = self.store.get_blob("key_centre")
        if blob is None:
            centre = key_centre(self.model, self.tokenizer, self.layout, self.config.keys.pooling)
            self.store.db.run("INSERT INTO blobs (key, value) VALUES (?, ?) "
                              "ON CONFLICT (key) DO NOTHING",
                              ("key_centre", centre.numpy().astype(np.float32).tobytes()))
            blob = self.store.get_blob("key_centre")  # another process's, if it was first
            assert blob is not None
        return torch.from_numpy(np.frombuffer(blob, dtype=np.float32).copy())

    def _load(self, version: int | None) -> LiveVersion:
        return load_live(self.store, version, self.layout.hidden_size, self.config)

    # ------------------------------------------------------------------ properties
    @property
    def version(self) -> int:
        return self._live.version

    @property
    def live(self) -> LiveVersion:
        """The current published version, fully loaded (immutable)."""
        return self._live

    @property
    def generator(self) -> BatchGenerator:
        """The batched generator (its ``stats`` count prefills, decoding steps and tokens)."""
        return self.serving.generator

    @property
    def store_path(self) -> Path:
        return self.store.root

    @property
    def db_path(self) -> Path:
        return self.store.db_path

    def close(self) -> None:
        self.store.close()

    # ------------------------------------------------------------------ keys and serving
    def keys(self, prompts: Sequence[str]) -> np.ndarray:
        """(N, d) unit keys of ``prompts`` on the frozen model."""
        return self.encoder.keys(prompts)

    def background_keys(self) -> np.ndarray:
        return self.background.keys()

    def training_prompts(self) -> frozenset[str]:
        """Every prompt the engine may train on or use as a gate negative at the live version:
        the background prompts, the stored retain prompts (the updates' own and the subject
        hard negatives) and the stored pieces' prompts and paraphrases. A benchmark checks that
        none of its evaluation prompts is among them."""
        snap = self._live.snapshot
        texts = set(self.background.prompts) | {r.prompt for r in snap.retain}
        texts |= {t for p in snap.pieces.values() for t in (p.prompt, *p.paraphrases)}
        return frozenset(texts)

    def route(self, prompts: Sequence[str]) -> list[Route]:
        """Which memory would serve each prompt (None: the base model)."""
        return self.serving.route(self._live, prompts)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Generate for a mixed batch: each row with its own memory, routed or fixed."""
        return self.serving.generate(self._live, requests)  # one version for the whole batch

    def batch(self) -> ServingBatch:
        """A continuous batch for a serving loop: requests join between decoding steps."""
        return ServingBatch(self.serving, lambda: self._live)

    def generate_stream(self, request: GenerationRequest) -> Iterator[StreamChunk]:
        """Yield text deltas; the last chunk carries the full result."""
        return self.serving.stream(self._live, request)

    def score(self, pairs: Sequence[tuple[str, str]], memory: str = "auto",
              batch_size: int = 32) -> list[Score]:
        """Teacher-forced scores of ``target`` after ``prompt`` on the served model (each
        prompt routed as generation would route it): summed log-probability and token
        accuracy (EasyEdit's edit metric)."""
        return self.serving.score(self._live, pairs, memory, batch_size)

    # ------------------------------------------------------------------ reading the codebook
    def memories(self) -> list[MemoryInfo]:
        return self._live.memories()

    def memory(self, memory_id: str) -> MemoryInfo:
        return self._live.memory_info(memory_id)

    def pieces(self) -> list[Piece]:
        return self._live.pieces()

    def piece(self, piece_id: str) -> Piece:
        return self._live.piece(piece_id)

    def versions(self) -> list[VersionInfo]:
        return self.store.versions()

    def codebook_info(self) -> dict:
        live = self._live
        return {
            "version": live.version,
            "n_memories": len(live.snapshot.memories),
            "n_pieces": len(live.snapshot.pieces),
            "n_versions": len(self.store.versions()),
            "index": live.router.index.kind,
            "adapters_cached": len(self.adapters),
            "model": self.model_name,
            "key_layer": self.layout.key_layer,
            "lora_layers": list(self.layout.lora_layers),
        }

    # ------------------------------------------------------------------ writing
    @property
    def context_length(self) -> int | None:
        """Positions the model can attend to (prompt + generated tokens); None if unknown."""
        return context_length(self.model)

    def validate_pieces(self, pieces: Sequence[PieceSpec], retain: Sequence[RetainSpec] = ()
                        ) -> None:
        """Raise ``InvalidInput`` naming the first bad field: texts (``pieces_io.validate``),
        then every training sequence (prompt or paraphrase + target + EOS, the IDK answer for
        unlearning) against the model's context length."""
        pieces_io.validate(pieces, retain)
        limit = self.context_length
        if limit is None:
            return

        def count(text: str, special: bool) -> int:
            if not text:
                return 0
            return len(keymod.tokenize(self.tokenizer, text,
                                       add_special_tokens=special)["input_ids"])

        def check(prompt: str, prompt_field: str, target: str, target_field: str,
                  unlearn: bool = False) -> None:
            n_prompt, n_target = count(prompt, True), count(target, False)
            # unlearning also trains towards the IDK answer, and its verify rounds on what the
            # model generates (up to VERIFY_TOKENS) before the target
            n_total = n_prompt + max(n_target + (verify if unlearn else 0),
                                     idk if unlearn else 0) + 1
            if n_total > limit:
                field = prompt_field if n_prompt >= n_target else target_field
                raise InvalidInput(
                    f"{field}: too long for the model's context of {limit} tokens "
                    f"({prompt_field} {n_prompt} + {target_field} {n_target} tokens, with "
                    f"what training adds: {n_total})", field=field)

        idk = count(self.config.trainer.idk_response, False)
        verify = VERIFY_TOKENS if self.config.trainer.verify_rounds else 0
        for i, p in enumerate(pieces):
            unlearn = p.kind == "unlearn"
            check(p.prompt, f"pieces[{i}].prompt", p.target, f"pieces[{i}].target", unlearn)
            for j, q in enumerate(p.paraphrases):
                check(q, f"pieces[{i}].paraphrases[{j}]", p.target, f"pieces[{i}].target",
                      unlearn)
        for i, r in enumerate(retain):
            check(r.prompt, f"retain[{i}].prompt", r.target, f"retain[{i}].target")

    def update(self, pieces: Sequence[PieceSpec], retain: Sequence[RetainSpec] = (),
               options: UpdateOptions | None = None, progress: ProgressCallback | None = None,
               should_cancel: CancelCheck | None = None,
               on_publish: PublishRecord | None = None) -> UpdateResult:
        """Apply a batch of edits and unlearning requests; publishes one new version.

        ``on_publish(result)`` returns SQL statements on the caller's own tables of the store's
        database that are committed in the transaction that publishes the version (a job
        marked done together with its effect, so that a crash can never leave one without the
        other).

        The change is planned on the head and published only if the head has not moved; if
        another process published first it is re-planned on the new head (only memories whose
        training task changed are retrained) and published again: no writer loses another's
        pieces."""
        self.validate_pieces(pieces, retain)
        return self._write(lambda plan: plan.apply(pieces, retain), options, progress,
                           should_cancel, on_publish)

    def delete_piece(self, piece_id: str, progress: ProgressCallback | None = None,
                     should_cancel: CancelCheck | None = None,
                     on_publish: PublishRecord | None = None) -> UpdateResult:
        """Revert one piece: its memory is retrained without it (or dropped if emptied)."""
        def change(plan: Updater) -> UpdateResult:
            if not is_piece_id(piece_id) or piece_id not in plan.snap.pieces:
                raise NotFound(f"no knowledge piece {piece_id!r}", field="piece_id")
            return plan.remove_pieces([piece_id], f"delete piece {piece_id}")

        return self._write(change, None, progress, should_cancel, on_publish)

    def delete_memory(self, memory_id: str, progress: ProgressCallback | None = None,
                      should_cancel: CancelCheck | None = None,
                      on_publish: PublishRecord | None = None) -> UpdateResult:
        """Drop a memory and every piece it holds."""
        def change(plan: Updater) -> UpdateResult:
            if not is_memory_id(memory_id) or memory_id not in plan.snap.memories:
                raise NotFound(f"no memory {memory_id!r}", field="memory_id")
            return plan.drop_memory(memory_id)

        return self._write(change, None, progress, should_cancel, on_publish)

    def rollback(self, version: int, on_publish: PublishRecord | None = None) -> UpdateResult:
        """Publish a new version whose codebook equals ``version``'s."""
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            raise InvalidInput("version must be a non-negative integer", field="version")
        for _ in range(MAX_REPLANS):
            with self._write_lock:
                self.refresh()
                current = self._live.snapshot
                if version > current.version:
                    raise NotFound(f"no codebook version {version}", field="version")
                if version == current.version:
                    raise ConflictError(f"version {version} is already current",
                                        field="version")
                old = self.store.snapshot(version, self.layout.hidden_size)
                removed = tuple(sorted(set(current.memories) - set(old.memories)))
                restored = tuple(sorted(set(old.memories) - set(current.memories)))
                result = UpdateResult(0, restored, (), removed,
                                      tuple(sorted(set(old.pieces) - set(current.pieces))),
                                      tuple(sorted(set(current.pieces) - set(old.pieces))))

                def extra(v: int, result: UpdateResult = result):
                    return on_publish(replace(result, codebook_version=v)) if on_publish else ()

                try:
                    new_version = self.store.publish(
                        current.version, old.memories.values(), old.pieces.values(),
                        old.retain, gate_file=old.gate_file, index_file=old.index_file,
                        reason=f"rollback to {version}", extra_sql=extra)
                except HeadMoved as moved:
                    logger.info("rollback: %s; re-planning", moved.message)
                    continue
                self._set_live(self._load(new_version))
                return replace(result, codebook_version=new_version)
        raise ConflictError(f"the codebook head kept moving; rollback not published after "
                            f"{MAX_REPLANS} attempts")

    def _write(self, change: Callable[[Updater], UpdateResult], options: UpdateOptions | None,
               progress: ProgressCallback | None, should_cancel: CancelCheck | None,
               on_publish: PublishRecord | None) -> UpdateResult:
        """Plan ``change`` on the head and publish it; on ``HeadMoved`` re-plan on the new head
        (the retry context keeps ids and trained adapters)."""
        retry = RetryContext()
        for attempt in range(MAX_REPLANS):
            with self._write_lock:
                self.refresh()
                live = self._live
                plan = Updater(self._update_context, live.snapshot, options, progress,
                               should_cancel, on_publish, retry=retry, base=live)
                try:
                    result = change(plan)
                except HeadMoved as moved:
                    logger.info("%s; re-planning on the new head (attempt %d)", moved.message,
                                attempt + 2)
                    continue
                return self._commit(result, plan.published)
        raise ConflictError(f"the codebook head kept moving; change not published after "
                            f"{MAX_REPLANS} attempts")

    def _commit(self, result: UpdateResult, published: LiveVersion | None) -> UpdateResult:
        """Serve the version just published: the one the change built in memory (its records,
        index and gate: no reload of the whole codebook), else loaded from the store."""
        if published is None or published.version != result.codebook_version:
            published = self._load(result.codebook_version)
        self._set_live(published)
        logger.info("published codebook version %d (%d memories)", result.codebook_version,
                    len(self._live.snapshot.memories))
        return result

    # ------------------------------------------------------------------ following the head
    def refresh(self) -> int:
        """Switch to the store's head if another process published a newer version; the
        version now served. The switch is one reference assignment: requests already running
        finish on the view they started with, later ones use the new one."""
        head = self.store.head()
        if head <= self._live.version:
            return self._live.version
        with self._live_lock:
            if head > self._live.version:
                live = self._load(head)
                if live.version > self._live.version:
                    self._live = live
                    logger.info("following the head: now serving codebook version %d",
                                live.version)
        return self._live.version

    def _set_live(self, live: LiveVersion) -> None:
        with self._live_lock:
            if live.version > self._live.version:
                self._live = live


def default_background() -> tuple[str, ...]:
    """Hard-negative prompts for the built-in model: the facts it knows, plus general text."""
    # one phrasing per fact: the other phrasings stay unseen, as paraphrases are in real use
    return tuple(f.prompts[0] for f in FACTS) + tuple(GENERAL_PROMPTS)


def general_background(tokenizer, user_file: str | Path | None = None) -> tuple[str, ...]:
    """Gate negatives and retention prompts for any model: the calibration prompts, the
    shipped general set (``train`` split; chat-form prompts in the model's chat template) and
    the user's own prompts (``LOKA_BACKGROUND_PROMPTS``)."""
    chat = (lambda text: user_prompt(tokenizer, text)) if has_template(tokenizer) else None
    prompts = [*CALIBRATION_PROMPTS, *render(general_prompts("train"), chat)]
    if user_file is not None:
        prompts += load_user_prompts(user_file)
    return tuple(dict.fromkeys(prompts))


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
    # a store from before LSH settings were pinned: its buckets were made with these
    pin_lsh_settings(store, stored.mapping.lsh_bits, stored.trainer.seed)
    if config is None:
        return stored
    if config.keys != stored.keys or config.lora != stored.lora:
        raise ModelMismatch("the store was created with other key/LoRA settings "
                            f"({stored.keys}, {stored.lora})", field="config")
    store.set_meta("config", config.model_dump_json())
    return config


def context_length(model) -> int | None:
    """The context length of ``model``'s config (``n_positions`` and its aliases), if any."""
    cfg = model.config
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    for name in ("n_positions", "max_position_embeddings", "n_ctx", "max_seq_len",
                 "seq_length"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None

