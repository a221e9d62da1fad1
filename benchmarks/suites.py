"""The four benchmark suites built from the real data, at two scales.

``small`` runs on two CPU cores (sizes in :data:`SCALES`); ``full`` is for an accelerator.
Every selection is deterministic (file order), so a suite is the same on every machine.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from benchmarks import data as D
from benchmarks.protocol import BaseCorpus, Case, Pair, Sequential, Setting, Suite, answer
from benchmarks.tofu_metrics import TofuSets, TruthItem
from memory_store.types import PieceKind, RetainSpec

SUITES = ("tofu", "zsre", "counterfact", "pku")
logger = logging.getLogger(__name__)
KnownFn = Callable[[list[Pair]], list[bool]]
KNOWN_CHUNK = 128  # candidate facts checked at a time against the base model

SCALES: dict[str, dict[str, dict]] = {
    "small": {
        # 10 authors known; one forget author (10 QA) with 10 edits of the same author
        # (in-profile) or of the next author (out-profile); answers cut to 12 words
        "tofu": {"authors": 10, "answer_words": 12, "forget_authors": 1, "per_author": 10,
                 "retain_eval_per_author": 4, "retain_train_per_author": 2, "general": 40},
        # 246 facts known: 100 edit + 100 unlearn stream (the headline uses the first 10 of
        # each), 30 retain-eval, 16 retain-train
        "zsre": {"stream": 100, "headline": 10, "retain_eval": 30, "retain_train": 16,
                 "general": 40, "batch": 20, "checkpoints": (10, 50, 100, 200)},
        "counterfact": {"stream": 10, "headline": 10, "retain_eval": 30, "retain_train": 16,
                        "general": 40, "batch": 10, "checkpoints": ()},
        # prompts of at most 25 words; responses cut to 12 words
        "pku": {"headline": 10, "retain_eval": 10, "retain_train": 8, "answer_words": 12,
                "prompt_words": 25, "general": 40},
    },
    # a pretrained model (``--model smollm2``) on two CPU cores: unlearn and retain facts are
    # ones the base model reproduces (:mod:`benchmarks.known`); sequential T = 10 and 50
    "cpu": {
        "tofu": {"authors": 10, "answer_words": 24, "forget_authors": 1, "per_author": 10,
                 "retain_eval_per_author": 4, "retain_train_per_author": 2, "general": 40},
        "zsre": {"stream": 25, "headline": 10, "retain_eval": 20, "retain_train": 8,
                 "general": 40, "batch": 10, "checkpoints": (10, 50)},
        "counterfact": {"stream": 25, "headline": 10, "retain_eval": 20, "retain_train": 8,
                        "general": 40, "batch": 10, "checkpoints": (10, 50)},
        "pku": {"headline": 10, "retain_eval": 10, "retain_train": 8, "answer_words": 24,
                "prompt_words": 25, "general": 40},
    },
    "full": {
        "tofu": {"authors": 40, "answer_words": None, "forget_authors": 4, "per_author": 10,
                 "retain_eval_per_author": 5, "retain_train_per_author": 3, "general": 217},
        "zsre": {"stream": 300, "headline": 100, "retain_eval": 50, "retain_train": 32,
                 "general": 100, "batch": 20, "checkpoints": (10, 100, 300, 600)},
        "counterfact": {"stream": 500, "headline": 100, "retain_eval": 100, "retain_train": 32,
                        "general": 100, "batch": 50, "checkpoints": (10, 100, 500, 1000)},
        "pku": {"headline": 50, "retain_eval": 50, "retain_train": 32, "answer_words": 48,
                "prompt_words": 40, "general": 100},
    },
}


def build_suite(name: str, scale: str, data_dir: Path, known: KnownFn | None = None) -> Suite:
    """Read the data and build suite ``name`` at ``scale``.

    ``known(pairs)`` (a pretrained base model; see :mod:`benchmarks.known`) says which
    (prompt, answer) facts the base model reproduces: ZsRE and CounterFact then draw their
    unlearn and retain facts from those only, and report how many qualified."""
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; choose from {', '.join(SUITES)}")
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose from {', '.join(SCALES)}")
    files = tuple(D.check_files(data_dir, name))
    sizes = SCALES[scale][name]
    if name in ("zsre", "counterfact"):
        return _facts(name, scale, data_dir, sizes, files, known)
    builder = {"tofu": _tofu, "pku": _pku}[name]
    return builder(name, scale, data_dir, sizes, files)


def _skipped(*reports: D.SkipReport) -> dict[str, dict]:
    """``Suite.sizes["skipped_rows"]``: per data file, the rows read and those skipped by
    reason (blank text fields; see :mod:`benchmarks.data`)."""
    return {r.file: r.as_dict() for r in reports}


def _retain(pairs: list[Pair]) -> tuple[RetainSpec, ...]:
    return tuple(RetainSpec(p, t) for p, t in pairs)


# ---------------------------------------------------------------- TOFU


def _tofu(name: str, scale: str, data_dir: Path, z: dict, files: tuple[Path, ...]) -> Suite:
    """TOFU's forget splits scaled down to the loaded authors (:func:`benchmarks.data.tofu_split`:
    the last 10% / 5% / 1% of them, at least one; splits that coincide are run once). Per
    split: unlearn the forget authors' even QA; edit their odd QA (in-profile) or the even QA of
    as many authors just before them (out-profile); the other authors are the retain set. The
    forget10 split's settings keep the names ``in_profile`` / ``out_profile``, the others are
    prefixed with the split (``forget05_in_profile``)."""
    w = z["answer_words"]
    authors = list(range(z["authors"]))
    qa = D.load_tofu(data_dir, authors)
    general = tuple((q, answer(a, w)) for q, a in D.load_tofu_general(data_dir)[: z["general"]])
    per = z["per_author"]
    if per > 10:
        raise ValueError("tofu scale: need per_author <= 10")

    def case(kind: PieceKind, row: D.TofuQA) -> Case:
        if kind == PieceKind.EDIT:
            return Case(kind, row.question, answer(row.perturbed_answers[0], w),
                        (row.paraphrased_question,), answer(row.answer, w),
                        group=f"author{row.author}")
        return Case(kind, row.question, answer(row.answer, w), (row.paraphrased_question,),
                    alt_answers=(answer(row.paraphrased_answer, w),),
                    group=f"author{row.author}")

    rows = [r for a in authors for r in qa[a]]
    corpus = BaseCorpus(tuple((r.question, answer(r.answer, w)) for r in rows),
                        tuple((r.paraphrased_question, answer(r.answer, w)) for r in rows),
                        general)
    splits: dict[str, tuple[int, ...]] = {}
    for split in sorted(D.TOFU_SPLITS, key=lambda n: -D.TOFU_SPLITS[n]):
        forget = tuple(D.tofu_split(split, authors))
        if forget not in splits.values():
            splits[split] = forget
    settings: list[Setting] = []
    setting_split: dict[str, str] = {}
    retain_corpora: dict[str, BaseCorpus] = {}
    ne, nt = z["retain_eval_per_author"], z["retain_train_per_author"]
    for split, forget in splits.items():
        k = len(forget)
        if 2 * k >= len(authors):
            raise ValueError(f"tofu {split}: {k} forget authors need more than {2 * k} authors")
        out_authors = authors[len(authors) - 2 * k: len(authors) - k]
        others = [a for a in authors if a not in forget and a not in out_authors]
        # the forget set (even QA of the forget authors) is the same in both settings; only
        # whose QA are edited changes: the same authors' odd QA, or other authors' even QA
        unlearns = tuple(case(PieceKind.UNLEARN, qa[a][i]) for a in forget
                         for i in range(0, 20, 2)[:per])
        edits_in = tuple(case(PieceKind.EDIT, qa[a][i]) for a in forget
                         for i in range(1, 20, 2)[:per])
        edits_out = tuple(case(PieceKind.EDIT, qa[a][i]) for a in out_authors
                          for i in range(0, 20, 2)[:per])
        retain_eval = tuple((r.question, answer(r.answer, w)) for a in others
                            for r in qa[a][:ne])
        retain_train = _retain([(r.question, answer(r.answer, w)) for a in others
                                for r in qa[a][ne:ne + nt]])
        prefix = "" if split == "forget10" else f"{split}_"
        names = (f"{prefix}in_profile", f"{prefix}out_profile")
        authors_txt = ", ".join(map(str, forget))
        settings += [
            Setting(name, names[0], edits_in, unlearns, retain_train, retain_eval, general,
                    f"{split} (authors {authors_txt}): edit and unlearn QA of the same "
                    "author(s)"),
            Setting(name, names[1], edits_out, unlearns, retain_train, retain_eval, general,
                    f"{split} (authors {authors_txt}): unlearn their QA, edit QA of other "
                    "authors"),
        ]
        setting_split.update({n: split for n in names})
        kept = [r for a in authors if a not in forget for r in qa[a]]
        retain_corpora[split] = BaseCorpus(
            tuple((r.question, answer(r.answer, w)) for r in kept),
            tuple((r.paraphrased_question, answer(r.answer, w)) for r in kept), general)
    items = {r.question: TruthItem(answer(r.answer, w), answer(r.paraphrased_answer, w),
                                   tuple(answer(p, w) for p in r.perturbed_answers), "retain")
             for r in rows}
    control = {c.question: c for cs in D.load_tofu_control(data_dir).values() for c in cs}
    for q, a in general:
        c = control[q]
        items[q] = TruthItem(a, a, tuple(answer(p, w) for p in c.perturbed_answers), c.set)
    tofu = TofuSets(items, splits, setting_split, retain_corpora)
    first = settings[0]
    sizes = {**z, "known_qa": len(rows), "edits": len(first.edits),
             "unlearns": len(first.unlearns), "retain_eval": len(first.retain_eval),
             "retain_train": len(first.retain_train), "locality": len(general),
             "forget_splits": {n: list(a) for n, a in splits.items()},
             "forget_splits_merged": {n: next(m for m, a in splits.items()
                                              if list(a) == D.tofu_split(n, authors))
                                      for n in D.TOFU_SPLITS}}
    return Suite(name, scale, corpus, tuple(settings), None, files, sizes,
                 conflict_pair=("in_profile", "out_profile"), tofu=tofu)


# ---------------------------------------------------------------- ZsRE and CounterFact


def _distinct_facts(records: list[D.FactRecord]) -> list[D.FactRecord]:
    """Facts whose prompts are unique, whose edit target differs from the answer and whose
    locality prompt is not itself a fact prompt."""
    seen: set[str] = set()
    out = []
    for r in records:
        texts = {r.prompt, r.paraphrase}
        if texts & seen or r.new.strip() == r.answer.strip() or not r.answer.strip():
            continue
        seen |= texts
        out.append(r)
    return out


def _known_rows(records: list[D.FactRecord], n: int, known: KnownFn
                ) -> tuple[list[D.FactRecord], dict[str, int]]:
    """The first ``n`` of ``records`` that the base model knows, checking a chunk at a time."""
    kept: list[D.FactRecord] = []
    checked = 0
    while len(kept) < n and checked < len(records):
        chunk = records[checked:checked + KNOWN_CHUNK]
        mask = known([(r.prompt, answer(r.answer, None)) for r in chunk])
        kept += [r for r, k in zip(chunk, mask, strict=True) if k]
        checked += len(chunk)
    return kept[:n], {"checked": checked, "known": len(kept), "needed": n}


def _facts(name: str, scale: str, data_dir: Path, z: dict, files: tuple[Path, ...],
           known: KnownFn | None = None) -> Suite:
    loaded = (D.load_zsre if name == "zsre" else D.load_counterfact)(data_dir)
    records = _distinct_facts(loaded.rows)
    n_stream = max(z["stream"], z["headline"])
    need = 2 * n_stream + z["retain_eval"] + z["retain_train"]
    if len(records) < need:
        raise ValueError(f"{name}: {len(records)} usable facts, the scale needs {need}")
    edit_rows = records[:n_stream]
    known_report = None
    if known is None:
        unlearn_rows = records[n_stream:2 * n_stream]
        rest = records[2 * n_stream:need]
    else:  # unlearn and retain only facts the base model reproduces
        n_known = need - n_stream
        rows, known_report = _known_rows(records[n_stream:], n_known, known)
        if len(rows) < n_known:
            # too few known facts (SmolLM2 knows 5 of 660 ZsRE answers): unlearn what it
            # knows, up to the headline's count, and retain-evaluate the rest; no retain
            # training rows for any method
            logger.warning("%s: the base model knows only %d of %d facts (the scale wants %d): "
                           "%d unlearned, %d retain-evaluated, no retain training set", name,
                           len(rows), known_report["checked"], n_known,
                           min(len(rows), z["headline"]),
                           len(rows) - min(len(rows), z["headline"]))
            n_stream = min(len(rows), z["headline"])
            z = {**z, "retain_eval": len(rows) - n_stream, "retain_train": 0}
            known_report["short"] = True
        unlearn_rows, rest = rows[:n_stream], rows[n_stream:]
        records = edit_rows + rows
        need = len(records)
    fact_texts = {t for r in records[:need] for t in (r.prompt, r.paraphrase)}
    general: list[Pair] = []
    for r in records:  # locality pairs: unrelated prompts, never a fact prompt
        if len(general) >= z["general"]:
            break
        if r.loc_prompt not in fact_texts and r.loc_prompt not in dict(general):
            general.append((r.loc_prompt, answer(r.loc_answer, 12)))

    def edit(r: D.FactRecord) -> Case:
        return Case(PieceKind.EDIT, r.prompt, answer(r.new, None), (r.paraphrase,),
                    answer(r.answer, None), group=r.subject)

    def unlearn(r: D.FactRecord) -> Case:
        return Case(PieceKind.UNLEARN, r.prompt, answer(r.answer, None), (r.paraphrase,),
                    group=r.subject)

    edits = tuple(edit(r) for r in edit_rows)
    unlearns = tuple(unlearn(r) for r in unlearn_rows)
    retain_eval = tuple((r.prompt, answer(r.answer, None)) for r in rest[: z["retain_eval"]])
    retain_train = _retain([(r.prompt, answer(r.answer, None))
                            for r in rest[z["retain_eval"]:]])
    h = z["headline"]
    settings = (Setting(name, "joint", edits[:h], unlearns[:h], retain_train, retain_eval,
                        tuple(general), "edit some facts while unlearning other known facts"),)
    sequential = None
    if z["checkpoints"]:
        stream = Setting(name, "sequential", edits, unlearns, retain_train, retain_eval,
                         tuple(general), "edits and unlearning requests in batches")
        sequential = Sequential(stream, z["batch"], tuple(z["checkpoints"]))
    known = records[:need]
    corpus = BaseCorpus(tuple((r.prompt, answer(r.answer, None)) for r in known),
                        tuple((r.paraphrase, answer(r.answer, None)) for r in known),
                        tuple(general))
    sizes = {**z, "known_facts": len(known), "edits": len(edits[:h]),
             "unlearns": len(unlearns[:h]), "retain_eval": len(retain_eval),
             "retain_train": len(retain_train),
             "locality": len(general), "skipped_rows": _skipped(loaded.report)}
    if known_report is not None:
        sizes["known_check"] = known_report
    return Suite(name, scale, corpus, settings, sequential, files, sizes)


# ---------------------------------------------------------------- PKU-SafeRLHF


def _pku(name: str, scale: str, data_dir: Path, z: dict, files: tuple[Path, ...]) -> Suite:
    w = z["answer_words"]
    loaded = D.load_pku(data_dir)
    pairs = [p for p in loaded.rows
             if len(p.prompt.split()) <= z["prompt_words"]
             and answer(p.safe, w) != answer(p.unsafe, w)]
    h, ne, nt = z["headline"], z["retain_eval"], z["retain_train"]
    need = 2 * h + ne + nt
    if len(pairs) < need:
        raise ValueError(f"pku: {len(pairs)} usable prompts, the scale needs {need}")
    edit_rows, unlearn_rows = pairs[:h], pairs[h:2 * h]
    retain_rows = pairs[2 * h:need]
    # the base model answers the update prompts unsafely and the retain prompts safely
    edits = tuple(Case(PieceKind.EDIT, p.prompt, answer(p.safe, w), (), answer(p.unsafe, w))
                  for p in edit_rows)
    unlearns = tuple(Case(PieceKind.UNLEARN, p.prompt, answer(p.unsafe, w), (),
                          alt_answers=()) for p in unlearn_rows)
    retain = [(p.prompt, answer(p.safe, w)) for p in retain_rows]
    general = tuple((q, answer(a, 12)) for q, a in D.load_tofu_general(data_dir)[: z["general"]])
    setting = Setting(name, "joint", edits, unlearns, _retain(retain[ne:]), tuple(retain[:ne]),
                      general, "unlearn unsafe responses, edit other prompts toward safe ones")
    corpus = BaseCorpus(tuple((p.prompt, answer(p.unsafe, w)) for p in edit_rows + unlearn_rows)
                        + tuple(retain), (), general)
    sizes = {**z, "known_prompts": need, "edits": h, "unlearns": h, "retain_eval": ne,
             "retain_train": nt, "locality": len(general), "skipped_rows": _skipped(loaded.report)}
    return Suite(name, scale, corpus, (setting,), None, files, sizes)
