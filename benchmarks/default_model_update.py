"""Quality and cost of one joint update on the tiny fact-trained GPT-2 (``LOKA_MODEL=tiny``).

Edits 20 facts and unlearns 20 others in ONE batch, then measures on the served model:
edit success (greedy output contains the new target) on the edited prompts, their supplied
paraphrase and their held-out paraphrases; unlearning success (the forgotten answer is absent);
related-fact retention (other facts of the touched entities unchanged); locality (untouched
entities and general prompts token-identical to the base model); and the update's wall time.

    python -m benchmarks.default_model_update --out benchmarks/results/default_model_update
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

from memory_store import Loka, LokaConfig
from memory_store.engine import default_background
from memory_store.models.builtin import FACTS, GENERAL_PROMPTS, counterfactual_answer
from memory_store.types import GenerationRequest, PieceKind, PieceSpec
from memory_store.update.updater import hard_negative_candidates

logger = logging.getLogger(__name__)


def pick(n_edit: int, n_unlearn: int):
    """Half of the entities get one edited and one unlearned fact each (edit and unlearning
    about the same entity: the conflicting case); their other facts measure retention, the
    other entities locality."""
    by_entity: dict[str, list] = {}
    for f in FACTS:
        by_entity.setdefault(f.entity, []).append(f)
    entities = sorted(by_entity)[::2]
    edits = [by_entity[e][0] for e in entities][:n_edit]
    unlearns = [by_entity[e][1] for e in entities][:n_unlearn]
    return edits, unlearns


def make_pieces(edits, unlearns) -> list[PieceSpec]:
    """Each fact's canonical prompt with its question-style phrasing as the one supplied
    paraphrase; the other phrasings are held out."""
    pieces = [PieceSpec(PieceKind.EDIT, f.prompts[0], " " + counterfactual_answer(f),
                        (f.prompts[1],)) for f in edits]
    pieces += [PieceSpec(PieceKind.UNLEARN, f.prompts[0], " " + f.answer, (f.prompts[1],))
               for f in unlearns]
    return pieces


def evaluation_split(edits, unlearns, pieces: list[PieceSpec]
                     ) -> tuple[list[str], list[str], tuple[str, ...]]:
    """(related prompts, unrelated prompts, background): what the run scores and what the gate
    may use as negatives, disjoint.

    Related: the other facts of the touched entities, each in its first phrasing that is not
    one of the update's subject hard negatives (a fact with none is not scored); no phrasing
    of them is background. Unrelated: the untouched entities and general prompts at even
    positions; the odd ones are the background, with the touched entities' own facts."""
    negatives = set(hard_negative_candidates(pieces))
    touched = {(f.entity, f.relation) for f in (*edits, *unlearns)}
    entities = {f.entity for f in (*edits, *unlearns)}
    related_facts = [f for f in FACTS if f.entity in entities
                     and (f.entity, f.relation) not in touched]
    related = [next(q for q in f.prompts if q not in negatives) for f in related_facts
               if any(q not in negatives for q in f.prompts)]
    others = sorted({f.entity for f in FACTS} - entities)
    held_out = set(others[::2])
    unrelated = [f.prompts[0] for f in FACTS if f.entity in held_out]
    unrelated += list(GENERAL_PROMPTS[::2])
    unrelated = [q for q in unrelated if q not in negatives]
    scored = {p for f in related_facts for p in f.prompts} | {
        p for f in FACTS if f.entity in held_out for p in f.prompts} | set(unrelated)
    background = tuple(p for p in default_background() if p not in scored)
    return related, unrelated, background


def _gen(loka: Loka, prompts: list[str], memory: str = "auto", n: int = 8):
    return loka.generate([GenerationRequest(p, n, memory=memory) for p in prompts])


def _rate(flags: list[bool]) -> float:
    return round(sum(flags) / max(len(flags), 1), 4)


def run(n_edit: int, n_unlearn: int, config: LokaConfig | None = None) -> dict:
    edits, unlearns = pick(n_edit, n_unlearn)
    pieces = make_pieces(edits, unlearns)
    with tempfile.TemporaryDirectory() as tmp:
        related, unrelated, background = evaluation_split(edits, unlearns, pieces)
        # evaluation is never training: no scored prompt is a gate negative or retain prompt
        loka = Loka.open(Path(tmp), model="tiny", config=config, background_prompts=background)
        base_related = _gen(loka, related, "none")
        base_unrelated = _gen(loka, unrelated, "none")
        base_unlearn = _gen(loka, [f.prompts[0] for f in unlearns], "none")
        start = time.perf_counter()
        result = loka.update(pieces)
        seconds = time.perf_counter() - start

        negatives = set(hard_negative_candidates(pieces))

        def phrasings(f, idx: int | slice) -> list[str]:
            """Held-out phrasings that are one of the update's subject hard negatives are not
            scored (counted in ``heldout_dropped``)."""
            if isinstance(idx, int):
                return [f.prompts[idx]]
            return [q for q in f.prompts[idx] if q not in negatives]

        def edit_hits(idx: int | slice) -> list[bool]:
            prompts, targets = [], []
            for f in edits:
                for q in phrasings(f, idx):
                    prompts.append(q)
                    targets.append(counterfactual_answer(f))
            return [t in o.text for t, o in zip(targets, _gen(loka, prompts), strict=True)]

        def unlearn_hits(idx: int | slice) -> list[bool]:
            prompts, answers = [], []
            for f in unlearns:
                for q in phrasings(f, idx):
                    prompts.append(q)
                    answers.append(f.answer)
            outs = _gen(loka, prompts, n=12)
            return [a not in o.text for a, o in zip(answers, outs, strict=True)]

        heldout = [q for f in (*edits, *unlearns) for q in phrasings(f, slice(2, None))]
        dropped = sum(len(f.prompts[2:]) for f in (*edits, *unlearns)) - len(heldout)
        overlap = sorted(set(related + unrelated + heldout) & loka.training_prompts())
        if overlap:
            raise RuntimeError(f"evaluation prompts used in training: {overlap[:3]}")
        rel = _gen(loka, related)
        unrel = _gen(loka, unrelated)
        metrics = {
            "edit_success_prompt": _rate(edit_hits(0)),
            "edit_success_supplied_paraphrase": _rate(edit_hits(1)),
            "edit_success_heldout_paraphrases": _rate(edit_hits(slice(2, None))),
            "unlearn_success_prompt": _rate(unlearn_hits(0)),
            "unlearn_success_supplied_paraphrase": _rate(unlearn_hits(1)),
            "unlearn_success_heldout_paraphrases": _rate(unlearn_hits(slice(2, None))),
            "base_knew_unlearned_answer": _rate([f.answer in o.text for f, o in
                                                 zip(unlearns, base_unlearn, strict=True)]),
            "related_retention": _rate([a.text == b.text for a, b in
                                        zip(rel, base_related, strict=True)]),
            "locality_token_identical": _rate([a.text == b.text for a, b in
                                               zip(unrel, base_unrelated, strict=True)]),
            "locality_routed_to_base": _rate([o.memory_id is None for o in unrel]),
        }
        report = {
            "n_edit": n_edit, "n_unlearn": n_unlearn, "update_seconds": round(seconds, 2),
            "memories": len(loka.memories()), "memories_created": len(result.memories_created),
            "decisions": {k: v.decision for k, v in result.decisions.items()},
            "n_related": len(related), "n_unrelated": len(unrelated),
            "n_background": len(background), "eval_training_overlap": len(overlap),
            "heldout_dropped": dropped,
            "metrics": metrics,
        }
        loka.close()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--edits", type=int, default=20)
    parser.add_argument("--unlearn", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/default_model_update"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    report = run(args.edits, args.unlearn)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(report, indent=2))
    rows = "\n".join(f"| {k} | {v} |" for k, v in report["metrics"].items())
    (args.out / "results.md").write_text(
        f"# {args.edits} edits + {args.unlearn} unlearning requests, one batch, tiny model\n\n"
        f"Update took {report['update_seconds']} s ({report['memories']} memories).\n\n"
        f"| metric | value |\n|---|---|\n{rows}\n")
    logger.info("%s", json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
