"""One codebook change, built off to the side and published atomically.

``Updater`` takes the current snapshot and produces the next version. Plan: supersession ->
keys -> mapping (LSH join, then capacity-bounded k-means) -> conflict score (split or MGDA).
Train: the touched memories only. Publish: index, gate, then one store transaction.
Everything it needs from the engine comes in an ``UpdateContext``.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from memory_store.codebook.live import LiveVersion
from memory_store.codebook.store import MemoryRecord, PieceRecord, RetainRecord, Snapshot, Store
from memory_store.config import LokaConfig
from memory_store.errors import Cancelled, NotReached
from memory_store.files import write_atomically
from memory_store.general_prompts import guess_subject, subject_negatives, swapped_negatives
from memory_store.ids import id_number, memory_id, piece_id
from memory_store.keys import KeyEncoder
from memory_store.lora.weights import adapter_hash, save_adapter
from memory_store.models.access import ModelLayout
from memory_store.routing.gate import Gate, save_gate, train_gate
from memory_store.routing.index import KeyIndex, index_kind, retrieval_index, retrieval_rows
from memory_store.routing.router import Router
from memory_store.types import (
    CancelCheck,
    ConflictDecision,
    PieceCheck,
    PieceKind,
    PieceSpec,
    ProgressCallback,
    PublishRecord,
    RetainSpec,
    UpdateOptions,
    UpdateResult,
)
from memory_store.update import conflict
from memory_store.update.mapping import Group, LshTable, capacity_kmeans, join_existing
from memory_store.update.supersede import deduplicate, norm_prompt, superseded
from memory_store.update.trainer import MemoryTask, PairCheck, train_memory

logger = logging.getLogger(__name__)


class Background:
    """Hard-negative prompts (general text, the base model's own knowledge) and their keys,
    computed on first use. With ``cache_dir`` the keys are kept in a file named by the hash of
    the prompts and the encoder (model, key layer, key centre), so a large general set is
    encoded once per model and machine, not at every start."""

    def __init__(self, prompts: Sequence[str], encoder: KeyEncoder,
                 cache_dir: Path | None = None) -> None:
        self.prompts = tuple(dict.fromkeys(prompts))
        self._encoder = encoder
        self._cache_dir = cache_dir
        self._keys: np.ndarray | None = None
        self._lock = threading.Lock()

    def _cache_file(self) -> Path | None:
        if self._cache_dir is None:
            return None
        h = hashlib.sha256()
        h.update(self._encoder.identity().encode())
        for p in self.prompts:
            h.update(p.encode("utf-8", "surrogatepass") + b"\0")
        return self._cache_dir / f"background-{h.hexdigest()[:32]}.npy"

    def keys(self) -> np.ndarray:
        with self._lock:
            if self._keys is None:
                self._keys = self._load_or_compute()
            return self._keys

    def _load_or_compute(self) -> np.ndarray:
        path = self._cache_file()
        if path is not None and path.is_file():
            try:
                keys = np.load(path, allow_pickle=False)
                if keys.shape[0] == len(self.prompts):
                    return keys
            except (OSError, ValueError) as exc:  # a damaged cache file: compute again
                logger.warning("ignoring background key cache %s (%s)", path, exc)
        if len(self.prompts) > 200:
            logger.info("encoding %d background prompts (once per model)", len(self.prompts))
        keys = self._encoder.keys(self.prompts)
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                write_atomically(path, lambda tmp: _save_npy(tmp, keys))
            except OSError as exc:  # a read-only or full store still serves
                logger.warning("could not cache background keys in %s (%s)", path, exc)
        return keys


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, array, allow_pickle=False)


@dataclass
class RetryContext:
    """What a change keeps across re-plans after ``HeadMoved``: its piece and memory ids (so
    a re-plan names the same things) and the adapters it trained, by memory and task (so only
    memories whose task changed on the new head are retrained)."""

    piece_ids: list[str] | None = None
    memory_ids: list[str] = field(default_factory=list)
    trained: dict[tuple[str, str], tuple[object, object]] = field(default_factory=dict)


@dataclass(frozen=True)
class UpdateContext:
    """What an update needs from the engine: the frozen model and where it hooks in, the
    method's settings, the key encoder, the store and the LSH table pinned in it."""

    model: object
    tokenizer: object
    model_name: str
    layout: ModelLayout
    config: LokaConfig
    encoder: KeyEncoder
    background: Background
    store: Store
    lsh: LshTable



def hard_negative_candidates(specs: Sequence[PieceSpec]) -> list[str]:
    """The subject hard negatives an update of ``specs`` may add (before the engine drops
    stored texts and those too close to the update's own keys): other relations of each
    piece's subject and the piece's relation with other subjects. Deterministic, so that a
    benchmark can keep its evaluation prompts out of them."""
    own = [t for s in specs for t in (s.prompt, *s.paraphrases)]
    candidates: list[str] = []
    for spec in specs:
        subject = spec.subject or guess_subject(spec.prompt)
        if subject:
            candidates += subject_negatives(subject, exclude=own)
            for text in (spec.prompt, *spec.paraphrases):
                candidates += swapped_negatives(text, subject)
    return list(dict.fromkeys(candidates))


class Updater:
    """Builds the version after ``snapshot``; one instance per change (``apply``,
    ``remove_pieces`` or ``drop_memory``), run under the engine's write lock."""

    def __init__(self, ctx: UpdateContext, snapshot: Snapshot, options: UpdateOptions | None,
                 progress: ProgressCallback | None, should_cancel: CancelCheck | None,
                 on_publish: PublishRecord | None = None,
                 retry: RetryContext | None = None, base: LiveVersion | None = None) -> None:
        self.ctx = ctx
        # the loaded version ``snapshot`` is: its index is extended rather than rebuilt
        self.base = base if base is not None and base.version == snapshot.version else None
        # the version this change published, built from what it holds (no reload)
        self.published: LiveVersion | None = None
        self.retry = retry or RetryContext()
        self.cfg = ctx.config
        self.snap = snapshot
        overrides = {}
        if options is not None:
            for name in ("unlearn_loss", "steps", "learning_rate", "seed", "max_steps"):
                value = getattr(options, name)
                if value is not None:
                    overrides[name] = value
        self.trainer = self.cfg.trainer.model_copy(update=overrides)
        self.progress = progress or (lambda stage, step, total: None)
        self.should_cancel = should_cancel or (lambda: False)
        self.on_publish = on_publish
        self.memories = dict(snapshot.memories)
        self.pieces = dict(snapshot.pieces)
        self.retain = list(snapshot.retain)
        self.touched: set[str] = set()
        self.created: list[str] = []
        self.removed_memories: list[str] = []
        self.pieces_added: list[str] = []
        self.pieces_removed: list[str] = []
        self.decisions: dict[str, ConflictDecision] = {}
        self.update_retain: list[tuple[str, str]] = []
        self.require_reached = bool(options is not None and options.require_reached)
        self.hard_negatives = options is None or options.hard_negatives
        self.checks: dict[str, PieceCheck] = {}
        self.stage_seconds: dict[str, float] = {}
        self.started = time.perf_counter()

    # ------------------------------------------------------------------ entry points
    def apply(self, specs: Sequence[PieceSpec], retain: Sequence[RetainSpec]) -> UpdateResult:
        self.progress("keys", 0, 1)
        t0 = time.perf_counter()
        texts = [t for s in specs for t in (s.prompt, *s.paraphrases)]
        all_keys = self.ctx.encoder.keys(texts + [r.prompt for r in retain])
        piece_keys, retain_keys = all_keys[: len(texts)], all_keys[len(texts):]
        self._add_retain(retain, retain_keys)
        if self.hard_negatives:
            self._add_subject_negatives(specs, piece_keys)
        self._timed("keys", t0)
        self.progress("keys", 1, 1)
        for pid in superseded(self.pieces.values(), specs):
            self._remove_piece(pid)
        offsets = np.cumsum([0] + [1 + len(s.paraphrases) for s in specs])
        kept = deduplicate(specs)
        if self.retry.piece_ids is None:  # a re-plan names the same pieces
            self.retry.piece_ids = [piece_id(n)
                                    for n in self.ctx.store.next_ids("piece", len(kept))]
        new_ids = list(self.retry.piece_ids)
        now = time.time()
        for pid, i in zip(new_ids, kept, strict=True):
            spec = specs[i]
            keys = piece_keys[offsets[i]:offsets[i + 1]]
            self.pieces[pid] = PieceRecord(pid, spec.kind, spec.prompt, spec.target,
                                           tuple(spec.paraphrases), "", keys, now)
        self.pieces_added = new_ids
        groups = self._map(new_ids)
        return self._train_and_publish(groups, f"update: {len(specs)} pieces")

    def remove_pieces(self, piece_ids: Sequence[str], reason: str) -> UpdateResult:
        for pid in piece_ids:
            self._remove_piece(pid)
        return self._train_and_publish(self._touched_groups([]), reason)

    def drop_memory(self, memory_id: str) -> UpdateResult:
        for pid in [p.id for p in self.pieces.values() if p.memory_id == memory_id]:
            del self.pieces[pid]
            self.pieces_removed.append(pid)
        del self.memories[memory_id]
        self.removed_memories.append(memory_id)
        return self._train_and_publish([], f"delete memory {memory_id}")

    # ------------------------------------------------------------------ steps
    def _add_subject_negatives(self, specs: Sequence[PieceSpec], piece_keys: np.ndarray) -> None:
        """Other relations of each piece's subject ("Danielle Darrieux was born in" when her
        mother tongue is edited) and the same relation of other subjects ("The mother tongue of
        Marie Curie is"), kept as retained prompts without a target: hard negatives of the gate
        and retention prompts. Those as close to one of the update's own keys as an unlisted
        paraphrase would be are left out, and so are stored texts."""
        own = [t for s in specs for t in (s.prompt, *s.paraphrases)]
        candidates = hard_negative_candidates(specs)
        taken = self._stored_texts() | {norm_prompt(t) for t in own} | {
            norm_prompt(r.prompt) for r in self.retain}
        candidates = [c for c in dict.fromkeys(candidates) if norm_prompt(c) not in taken]
        if not candidates or not len(piece_keys):
            return
        keys = self.ctx.encoder.keys(candidates)
        near = (keys @ piece_keys.T).max(1) >= self.cfg.router.exclude_similarity
        for prompt, key, is_near in zip(candidates, keys, near, strict=True):
            if not is_near:
                self.retain.append(RetainRecord(prompt, "", key))

    def _add_retain(self, retain: Sequence[RetainSpec], keys: np.ndarray) -> None:
        have = {(r.prompt, r.target) for r in self.retain}
        for spec, key in zip(retain, keys, strict=True):
            self.update_retain.append((spec.prompt, spec.target))
            if (spec.prompt, spec.target) not in have:
                self.retain.append(RetainRecord(spec.prompt, spec.target, key))
                have.add((spec.prompt, spec.target))

    def _remove_piece(self, pid: str) -> None:
        piece = self.pieces.pop(pid)
        self.pieces_removed.append(pid)
        if piece.memory_id in self.memories:
            self.touched.add(piece.memory_id)

    def _members(self, memory_id: str) -> list[str]:
        return [p.id for p in self.pieces.values() if p.memory_id == memory_id]

    def _map(self, new_ids: list[str]) -> list[Group]:
        """LSH join into existing memories with room; the rest by capacity-bounded k-means."""
        m = self.cfg.mapping
        counts = dict.fromkeys(self.memories, 0)  # one pass: not one scan per memory
        for piece in self.pieces.values():
            if piece.memory_id in counts:
                counts[piece.memory_id] += 1
        prompt_keys = np.stack([self.pieces[p].keys[0] for p in new_ids])
        joined, rest = join_existing(new_ids, prompt_keys, self.memories, counts, self.ctx.lsh,
                                     m)
        for mid, pids in joined.items():
            self.touched.add(mid)
            for pid in pids:
                self._assign(pid, mid)
        groups = []
        if rest:
            keys = np.stack([self.pieces[p].keys[0] for p in rest])
            labels = capacity_kmeans(keys, m.capacity, m.kmeans_iters, self.cfg.trainer.seed)
            for label in sorted(set(labels.tolist())):
                groups.append(Group([p for p, lab in zip(rest, labels, strict=True)
                                     if lab == label]))
        return self._touched_groups(groups)

    def _assign(self, pid: str, memory_id: str) -> None:
        p = self.pieces[pid]
        self.pieces[pid] = PieceRecord(p.id, p.kind, p.prompt, p.target, p.paraphrases,
                                       memory_id, p.keys, p.created_at, p.added_in)

    def _touched_groups(self, groups: list[Group]) -> list[Group]:
        for mid in sorted(self.touched):
            members = self._members(mid)
            if members:
                groups.insert(0, Group(members, memory_id=mid))
            else:
                del self.memories[mid]
                self.removed_memories.append(mid)
        return groups

    # ------------------------------------------------------------------ conflict
    def _resolve_conflicts(self, groups: list[Group]) -> list[Group]:
        out = []
        for g in groups:
            kinds = {self.pieces[p].kind for p in g.piece_ids}
            if len(kinds) == 1:
                g.kind = str(kinds.pop())
                out.append(g)
                continue
            self.progress("conflict", len(out), len(groups))
            t0 = time.perf_counter()
            decision = self._conflict(g)
            self._timed("conflict", t0)
            if decision.decision == "split":
                edits = [p for p in g.piece_ids if self.pieces[p].kind == PieceKind.EDIT]
                unlearns = [p for p in g.piece_ids if self.pieces[p].kind == PieceKind.UNLEARN]
                keep_edit = self._existing_kind(g) != "unlearn"
                first = Group(edits if keep_edit else unlearns, g.memory_id, decision,
                              kind="edit" if keep_edit else "unlearn")
                second = Group(unlearns if keep_edit else edits, None, decision,
                               kind="unlearn" if keep_edit else "edit")
                out += [first, second]
            else:
                out.append(Group(g.piece_ids, g.memory_id, decision, multitask=True,
                                 kind="mixed"))
        return out

    def _existing_kind(self, g: Group) -> str | None:
        rec = self.memories.get(g.memory_id) if g.memory_id else None
        return rec.kind if rec else None

    def _conflict(self, g: Group) -> ConflictDecision:
        ctx = self.ctx
        return conflict.decide(ctx.model, ctx.tokenizer, ctx.layout,
                               self._task(g, with_retain=False), self.trainer, self.cfg.lora,
                               self.cfg.conflict)

    # ------------------------------------------------------------------ training
    def _task(self, g: Group, with_retain: bool = True) -> MemoryTask:
        task = MemoryTask()
        for pid in g.piece_ids:
            p = self.pieces[pid]
            pairs = [(q, p.target) for q in (p.prompt, *p.paraphrases)]
            (task.edits if p.kind == PieceKind.EDIT else task.unlearns).extend(pairs)
        if with_retain:
            task.retain = self._retain_for(g)
        return task

    def _centroid(self, piece_ids: Sequence[str]) -> np.ndarray:
        keys = np.concatenate([self.pieces[p].keys for p in piece_ids])
        c = keys.mean(0)
        return (c / (np.linalg.norm(c) + 1e-12)).astype(np.float32)

    def _stored_texts(self) -> set[str]:
        return {norm_prompt(q) for p in self.pieces.values() for q in (p.prompt, *p.paraphrases)}

    def _retain_for(self, g: Group) -> list[tuple[str, str]]:
        """The update's retain prompts, then the stored retain prompts and background prompts
        nearest to the memory (hard negatives), up to ``max_retain``."""
        limit = self.trainer.max_retain
        centre = self._centroid(g.piece_ids)
        # the update's own retain prompts first (+2 outranks any cosine), nearest first
        own = set(self.update_retain)
        stored = self._stored_texts()
        candidates: list[tuple[float, tuple[str, str]]] = []
        for r in self.retain:
            pair = (r.prompt, r.target)
            candidates.append((float(r.key @ centre) + (2.0 if pair in own else 0.0), pair))
        for prompt, key in self._background_negatives():
            if norm_prompt(prompt) not in stored:
                candidates.append((float(key @ centre), (prompt, "")))
        candidates.sort(key=lambda c: -c[0])
        chosen: list[tuple[str, str]] = []
        for _, pair in candidates:
            if len(chosen) >= limit:
                break
            if pair not in chosen:
                chosen.append(pair)
        return chosen

    def _background_negatives(self) -> list[tuple[str, np.ndarray]]:
        """Background prompts usable as negatives: not a stored text and not so close to a
        stored key that they are probably unlisted paraphrases."""
        prompts, bg = self.ctx.background.prompts, self.ctx.background.keys()
        if not len(bg) or not self.pieces:
            return list(zip(prompts, bg, strict=True))
        pos = np.concatenate([p.keys for p in self.pieces.values()])
        near = (bg @ pos.T).max(1) >= self.cfg.router.exclude_similarity
        stored = self._stored_texts()
        return [(q, k) for q, k, n in zip(prompts, bg, near, strict=True)
                if not n and norm_prompt(q) not in stored]

    def _train_and_publish(self, groups: list[Group], reason: str) -> UpdateResult:
        groups = self._resolve_conflicts(groups)
        fresh = [g for g in groups if g.memory_id is None]
        pool = self.retry.memory_ids
        if len(fresh) > len(pool):  # ids reserved by an earlier plan are used first
            pool += [memory_id(n) for n in
                     self.ctx.store.next_ids("memory", len(fresh) - len(pool))]
        for g, mid in zip(fresh, pool, strict=False):
            g.memory_id = mid
            self.created.append(g.memory_id)
        steps = self.trainer.steps
        total = steps * len(groups)
        for i, g in enumerate(groups):
            if self.should_cancel():
                raise Cancelled("update cancelled")
            self._train_group(g, lambda s, _t, i=i: self.progress("train", i * steps + s, total))
        self.progress("router", 0, 1)
        return self._publish(reason)

    def _train_group(self, g: Group, progress) -> None:
        ctx = self.ctx
        for pid in g.piece_ids:
            self._assign(pid, g.memory_id)
        seed = self.trainer.seed * 1_000_003 + id_number(g.memory_id)
        t0 = time.perf_counter()
        task = self._task(g)
        self._timed("retain_select", t0)
        # the same memory with the same task on a re-plan: the adapter trained before serves
        digest_key = (g.memory_id, hashlib.sha256(repr(
            (task, g.multitask, g.kind, seed, self.trainer)).encode()).hexdigest())
        if digest_key in self.retry.trained:
            weights, stats = self.retry.trained[digest_key]
            progress(self.trainer.steps, self.trainer.steps)
        else:
            weights, stats = train_memory(ctx.model, ctx.tokenizer, ctx.layout, task,
                                          self.trainer, self.cfg.lora, multitask=g.multitask,
                                          seed=seed, progress=progress,
                                          should_cancel=self.should_cancel)
            self.retry.trained[digest_key] = (weights, stats)
            for name, sec in stats.seconds.items():
                key = f"train_{name}"
                self.stage_seconds[key] = self.stage_seconds.get(key, 0.0) + sec
        self._record_checks(g, stats.checks, stats.steps)
        if not stats.converged:
            logger.warning("memory %s did not reach its targets in %d steps", g.memory_id,
                           stats.steps)
        digest = adapter_hash(weights)
        adapter_dir = f"adapters/{g.memory_id}/{digest}"
        save_adapter(weights, ctx.layout, ctx.model_name, ctx.store.root / adapter_dir)
        key = self._centroid(g.piece_ids)
        variant_sims = np.concatenate([self.pieces[p].keys for p in g.piece_ids]) @ key
        stats_ = {"min": float(variant_sims.min()), "mean": float(variant_sims.mean()),
                  "max": float(variant_sims.max()), "steps": float(stats.steps),
                  "converged": float(stats.converged)}
        old = self.memories.get(g.memory_id)
        self.memories[g.memory_id] = MemoryRecord(
            g.memory_id, g.kind, digest, adapter_dir, key,
            int(ctx.lsh.buckets(key[None])[0]), g.conflict or (old.conflict if old else None),
            stats_, stats.loss, old.created_at if old else time.time())
        if g.conflict is not None:
            self.decisions[g.memory_id] = g.conflict

    def _timed(self, stage: str, since: float) -> None:
        self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + (
            time.perf_counter() - since)

    def _record_checks(self, g: Group, checks: list[PairCheck], steps: int) -> None:
        """One ``PieceCheck`` per piece of the memory from its pairs' greedy checks."""
        by_pair: dict[tuple[str, str, str], bool] = {}
        for c in checks:
            by_pair[(c.kind, c.prompt, c.target)] = (
                by_pair.get((c.kind, c.prompt, c.target), True) and c.reached)
        for pid in g.piece_ids:
            p = self.pieces[pid]
            kind = str(p.kind)
            prompts = {q: by_pair.get((kind, q, p.target), True)
                       for q in (p.prompt, *p.paraphrases)}
            missed = [i for i, ok in enumerate(prompts.values()) if not ok]
            if not missed:
                reason = ""
            elif p.kind == PieceKind.EDIT:
                reason = (f"greedy output does not start with the target on prompts {missed} "
                          f"(0: the prompt, then its paraphrases) after {steps} steps")
            else:
                reason = (f"greedy output still holds the unlearned answer on prompts {missed} "
                          f"(0: the prompt, then its paraphrases) after {steps} steps")
            self.checks[pid] = PieceCheck(pid, p.kind, not missed, prompts, reason, steps)

    # ------------------------------------------------------------------ router and publish
    def _publish(self, reason: str) -> UpdateResult:
        """Write the index and gate files (named by content), then publish on the base version
        (``HeadMoved`` if another writer published meanwhile: the caller re-plans). With
        ``require_reached``, a piece that did not take fails the update (``NotReached``)."""
        failed = [c for c in self.checks.values() if not c.reached]
        if failed and self.require_reached:
            raise NotReached(f"{len(failed)} of {len(self.checks)} pieces did not take "
                             f"(first: {failed[0].piece_id}: {failed[0].reason}); nothing was "
                             "published", checks=tuple(failed), field="pieces")
        for c in failed:
            logger.warning("piece %s not reached: %s", c.piece_id, c.reason)
        t0 = time.perf_counter()
        store = self.ctx.store
        mems = [self.memories[k] for k in sorted(self.memories)]
        gate_file = index_file = None
        index, gate = None, None
        if mems:
            index = self._index(mems)
            index_file = store.put_file("index", "faiss", index.save)
            self._timed("index", t0)
            t1 = time.perf_counter()
            gate = self._train_gate(index)
            self._timed("gate", t1)
            t0 = time.perf_counter()
            if gate is not None:
                gate_file = store.put_file("gate", "safetensors",
                                           lambda path: save_gate(gate, path))
        if self.should_cancel():
            raise Cancelled("update cancelled")
        self.progress("publish", 0, 1)
        updated = sorted(self.touched - set(self.removed_memories) - set(self.created))
        checks = tuple(self.checks[p] for p in sorted(self.checks) if p in self.pieces)
        stages = {k: round(v, 3) for k, v in self.stage_seconds.items()}
        result = UpdateResult(0, tuple(self.created), tuple(updated),
                              tuple(self.removed_memories), tuple(self.pieces_added),
                              tuple(self.pieces_removed), dict(self.decisions),
                              time.perf_counter() - self.started, checks, stages)
        on_publish = self.on_publish

        def extra(version: int):
            return on_publish(replace(result, codebook_version=version)) if on_publish else ()

        version = store.publish(self.snap.version, mems, self.pieces.values(), self.retain,
                                gate_file=gate_file, index_file=index_file, reason=reason,
                                extra_sql=extra)
        self._timed("publish", t0)
        stages["publish"] = round(self.stage_seconds["publish"], 3)
        self.published = self._live_after(version, index, gate, gate_file, index_file)
        self.progress("publish", 1, 1)
        return replace(result, codebook_version=version)

    def _index(self, mems: list[MemoryRecord]) -> KeyIndex:
        """The routing index of the new version: the base version's with the new pieces'
        keys appended when the change only adds pieces whose ids sort after every stored one
        (rows stay in the canonical order of ``retrieval_rows``); else rebuilt."""
        dim = self.ctx.layout.hidden_size
        base, new = self.base, self.pieces_added
        if (base is not None and self.cfg.router.retrieval == "piece" and new
                and not self.pieces_removed and not self.removed_memories
                and len(base.router.index) == sum(len(p.keys) for p in self.snap.pieces.values())
                and all(self.pieces[p].memory_id == q.memory_id
                        for p, q in self.snap.pieces.items())
                and (not self.snap.pieces or min(new) > max(self.snap.pieces))):
            ids, keys = retrieval_rows((), [self.pieces[p] for p in new], "piece", dim)
            total = len(base.router.index) + len(ids)
            if index_kind(self.cfg.index, total) == base.router.index.kind:
                return base.router.index.extended(keys, ids)
        return retrieval_index(mems, self.pieces.values(), self.cfg.router.retrieval,
                               self.cfg.index, dim)

    def _live_after(self, version: int, index: KeyIndex | None, gate: Gate | None,
                    gate_file: str | None, index_file: str | None) -> LiveVersion:
        """The published version as a reader would load it, from the records in hand: rows
        unchanged since the base keep their ``added_in``, new ones carry ``version``."""
        old_mems, old_pieces = self.snap.memories, self.snap.pieces
        mems = {}
        for mid in sorted(self.memories):
            m = self.memories[mid]
            was = old_mems.get(mid)
            mems[mid] = was if was is not None and was.content_hash == m.content_hash \
                else replace(m, added_in=version)
        pieces = {}
        for pid in sorted(self.pieces):
            p = self.pieces[pid]
            was = old_pieces.get(pid)
            pieces[pid] = was if was is not None and was.memory_id == p.memory_id \
                else replace(p, added_in=version)
        old_retain = {(r.prompt, r.target): r for r in self.snap.retain}
        retain = tuple(old_retain.get((r.prompt, r.target)) or replace(r, added_in=version)
                       for r in self.retain)
        snap = Snapshot(version, mems, pieces, retain, gate_file, index_file)
        if index is None:
            index = KeyIndex(np.zeros((0, self.ctx.layout.hidden_size), np.float32), [],
                             self.cfg.index)
        return LiveVersion(snap, Router(index, gate if self.cfg.router.enabled else None,
                                        self.cfg.router))

    def _gate_positives(self) -> np.ndarray:
        """The gate's positive keys: every key of the pieces this change added or moved, plus
        at most ``router.max_gate_keys`` of the other stored keys (a seeded sample), so that
        retraining costs the same on a codebook of any size."""
        fresh, old = [], []
        for pid, p in self.pieces.items():
            was = self.snap.pieces.get(pid)
            (old if was is not None and was.memory_id == p.memory_id else fresh).append(p.keys)
        limit = self.cfg.router.max_gate_keys
        old_keys = np.concatenate(old) if old else None
        if old_keys is not None and len(old_keys) > limit:
            rng = np.random.default_rng(self.cfg.router.seed + len(old_keys))
            old_keys = old_keys[np.sort(rng.choice(len(old_keys), limit, replace=False))]
        parts = fresh + ([old_keys] if old_keys is not None else [])
        return np.concatenate(parts)

    def _train_gate(self, index: KeyIndex) -> Gate | None:
        if not self.cfg.router.enabled:
            return None
        pos = self._gate_positives()
        retain = [r.key for r in self.retain]
        limit = self.cfg.router.max_gate_keys
        if len(retain) > limit:  # the stored retain prompts, sampled as the old keys are
            rng = np.random.default_rng(self.cfg.router.seed + len(retain))
            retain = [retain[i] for i in sorted(rng.choice(len(retain), limit, replace=False))]
        negs = retain + [k for _, k in self._background_negatives()]
        neg = np.stack(negs) if negs else np.zeros((0, pos.shape[1]), np.float32)
        if self.cfg.router.retrieval == "piece" and len(index) > 1:
            # leave-one-out: a stored key finds itself at similarity 1; an unseen paraphrase
            # would not, so the gate learns from the next-nearest key instead (the gate is
            # monotone in similarity, so the stored prompt itself is accepted as well)
            pos_sims = index.search(pos, 2)[0][:, 1]
        else:
            pos_sims = index.search(pos, 1)[0][:, 0]
        neg_sims = index.search(neg, 1)[0][:, 0] if len(neg) else np.zeros(0, np.float32)
        return train_gate(pos, pos_sims, neg, neg_sims, self.cfg.router)
