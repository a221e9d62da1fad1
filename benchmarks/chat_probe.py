"""Do edits and unlearning taught on completion prompts hold when the question is asked in chat?

One update of 10 edits + 10 unlearning requests (CounterFact facts SmolLM2 knows,
``benchmarks/results/update_speed/facts.json``; each with its CounterFact rephrase as the
supplied paraphrase) on a fresh store, then each fact asked as a chat question through the
model's chat template (the question is written from the prompt by a relation template and
never given to the update). Per question: whether the router sends it to a memory, the edit
target appears / the unlearned answer is absent in the routed output, and the same with the
piece's memory forced (what the memory would do if routing found it), plus the highest cosine
between the question's key and the keys the update stored.

Variants: ``completion_only`` (as above); ``chat_statement``: the piece's own prompt, sent as a
user message through the chat template, is also supplied as a paraphrase (needs no question);
``chat_paraphrase``: the chat question itself is supplied (``chat_questions`` of a piece) and a
second, held-out chat phrasing is asked. After each update, chat locality: held-out general
chat prompts and chat questions about other relations of the same subjects, the share routed
to a memory and the share whose output is token-identical to the base model's.

    python -m benchmarks.chat_probe --model smollm2 --out benchmarks/results/chat_probe/
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from memory_store import Loka
from memory_store.general_prompts import general_prompts
from memory_store.models.chat import user_prompt
from memory_store.types import GenerationRequest, PieceKind, PieceSpec

logger = logging.getLogger(__name__)

VARIANTS = ("completion_only", "chat_statement", "chat_paraphrase")
FACTS = Path(__file__).resolve().parent / "results" / "update_speed" / "facts.json"

# (prompt pattern, question, held-out question): CounterFact relations as chat questions
QUESTIONS = [
    (r"^The mother tongue of (?P<s>.+) is$", "What is the mother tongue of {s}?",
     "Which language did {s} grow up speaking?"),
    (r"^The native language of (?P<s>.+) is$", "What is the native language of {s}?",
     "Which language did {s} grow up speaking?"),
    (r"^(?P<s>.+) (?:was|is) created by$", "Who created {s}?", "Which company made {s}?"),
    (r"^(?P<s>.+) is developed by$", "Who developed {s}?", "Which company made {s}?"),
    (r"^(?P<s>.+) belongs to the continent of$", "Which continent does {s} belong to?",
     "On which continent is {s}?"),
    (r"^(?P<s>.+) is located in the country of$", "In which country is {s} located?",
     "Which country is {s} in?"),
    (r"^The headquarters of (?P<s>.+) is in$", "Where is the headquarters of {s}?",
     "In which city is {s} headquartered?"),
    (r"^The official language of (?P<s>.+) is$", "What is the official language of {s}?",
     "Which language is official in {s}?"),
    (r"^The official religion of (?P<s>.+) is$", "What is the official religion of {s}?",
     "Which religion did {s} follow?"),
    (r"^(?P<s>.+) follows the religion of$", "Which religion does {s} follow?",
     "Which religion did {s} follow?"),
]


# other relations of a subject, asked in chat (never a hard negative: those are completions)
SAME_SUBJECT_CHAT = ("Where was {s} born?", "What is {s} best known for?",
                     "Tell me one fact about {s}.")


def questions(prompt: str) -> tuple[str, str] | None:
    """(chat question, held-out chat question) for a CounterFact prompt, None if no template
    fits."""
    for pattern, q, held in QUESTIONS:
        m = re.match(pattern, prompt)
        if m:
            return q.format(s=m["s"]), held.format(s=m["s"])
    return None


def _answer_in(answer: str, text: str) -> bool:
    return answer.strip().lower() in text.lower()


def run(model: str, variant: str, facts: list[dict]) -> dict[str, Any]:
    usable = [(r, questions(r["prompt"])) for r in facts]
    skipped = sum(q is None for _, q in usable)
    usable = [(r, q) for r, q in usable if q is not None][:20]
    edits, unlearns = usable[:10], usable[10:20]
    with tempfile.TemporaryDirectory() as store:
        loka = Loka.open(store, model=model)
        tok = loka.tokenizer

        def chat(q: str) -> str:
            return user_prompt(tok, q)

        def spec(kind: PieceKind, r: dict, q: tuple[str, str]) -> PieceSpec:
            target = r["target_new"] if kind is PieceKind.EDIT else r["ground_truth"]
            paraphrases = [r["rephrase_prompt"]]
            if variant == "chat_paraphrase":
                paraphrases.append(chat(q[0]))
            elif variant == "chat_statement":
                paraphrases.append(chat(r["prompt"]))
            return PieceSpec(kind, r["prompt"], " " + target, tuple(paraphrases), r["subject"])

        pieces = [spec(PieceKind.EDIT, r, q) for r, q in edits]
        pieces += [spec(PieceKind.UNLEARN, r, q) for r, q in unlearns]
        asked = {p.prompt: q for p, (_, q) in zip(pieces, edits + unlearns, strict=True)}

        def gen(prompts: list[str], memory: str | list[str] = "auto") -> list[Any]:
            mems = [memory] * len(prompts) if isinstance(memory, str) else memory
            return loka.generate([GenerationRequest(p, max_new_tokens=20, memory=m)
                                  for p, m in zip(prompts, mems, strict=True)])

        qs = [chat(asked[p.prompt][0]) for p in pieces]
        held = [chat(asked[p.prompt][1]) for p in pieces]
        base = {"question": gen(qs, "none"), "heldout_question": gen(held, "none")}
        general = [chat(g.prompt) for g in general_prompts("heldout") if g.form == "chat"]
        same = [chat(t.format(s=p.subject)) for p in pieces for t in SAME_SUBJECT_CHAT]
        untouched = {"general_chat": general, "same_subject_chat": same}
        before = {k: [r.text for r in gen(v, "none")] for k, v in untouched.items()}
        t0 = time.perf_counter()
        loka.update(pieces)
        seconds = time.perf_counter() - t0
        owner = {pc.prompt: pc.memory_id for pc in loka.pieces()}
        stored = loka.keys([q for p in pieces for q in (p.prompt, *p.paraphrases)])
        rows = []
        for label, prompts in (("question", qs), ("heldout_question", held)):
            routed = gen(prompts)
            forced = gen(prompts, [owner[p.prompt] for p in pieces])
            sims = loka.keys(prompts) @ stored.T
            for i, p in enumerate(pieces):
                ans = p.target
                ok = (_answer_in if p.kind is PieceKind.EDIT else
                      (lambda a, t: not _answer_in(a, t)))
                rows.append({
                    "kind": p.kind.value, "asked": label, "prompt": p.prompt,
                    "question": prompts[i], "target": ans,
                    "base_has_true_answer": _answer_in(
                        facts_truth(p, edits, unlearns), base[label][i].text),
                    "routed_memory": routed[i].memory_id,
                    "routed_to_own_memory": routed[i].memory_id == owner[p.prompt],
                    "routed_ok": ok(ans, routed[i].text), "routed_text": routed[i].text,
                    "forced_ok": ok(ans, forced[i].text), "forced_text": forced[i].text,
                    "max_key_similarity": round(float(np.max(sims[i])), 3)})
        locality = {}
        for k, prompts in untouched.items():
            after = gen(prompts)
            locality[k] = {"n": len(prompts),
                           "routed": float(np.mean([r.memory_id is not None for r in after])),
                           "identical_to_base": float(np.mean(
                               [r.text == b for r, b in zip(after, before[k], strict=True)]))}
        loka.close()
    return {"variant": variant, "update_seconds": round(seconds, 1),
            "facts_without_question_template": skipped, "rows": rows,
            "summary": _summary(rows), "locality": locality}


def facts_truth(p: PieceSpec, edits: list, unlearns: list) -> str:
    """The fact's true (base) answer."""
    for r, _ in edits + unlearns:
        if r["prompt"] == p.prompt:
            return r["ground_truth"]
    raise KeyError(p.prompt)


def _summary(rows: list[dict]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for kind in ("edit", "unlearn"):
        for asked in ("question", "heldout_question"):
            rs = [r for r in rows if r["kind"] == kind and r["asked"] == asked]
            if not rs:
                continue
            out[f"{kind}/{asked}"] = {
                "n": len(rs),
                "routed_to_own_memory": float(np.mean([r["routed_to_own_memory"] for r in rs])),
                "routed_ok": float(np.mean([r["routed_ok"] for r in rs])),
                "forced_ok": float(np.mean([r["forced_ok"] for r in rs])),
                "mean_max_key_similarity": float(np.mean([r["max_key_similarity"]
                                                          for r in rs]))}
    return out


def markdown(results: list[dict]) -> str:
    loc = ["| variant | untouched chat prompts | n | routed to a memory | "
           "token-identical to base |", "|---|---|---|---|---|"]
    for res in results:
        for key, s in res["locality"].items():
            loc.append(f"| {res['variant']} | {key} | {s['n']} | {s['routed']:.2f} | "
                       f"{s['identical_to_base']:.2f} |")
    lines = ["| variant | pieces / chat question | n | routed to its memory | holds (routed) | "
             "holds (memory forced) | max key cosine (mean) |", "|---|---|---|---|---|---|---|"]
    for res in results:
        for key, s in res["summary"].items():
            lines.append(f"| {res['variant']} | {key} | {s['n']} | "
                         f"{s['routed_to_own_memory']:.2f} | {s['routed_ok']:.2f} | "
                         f"{s['forced_ok']:.2f} | {s['mean_max_key_similarity']:.2f} |")
    return "\n".join(lines) + "\n\n" + "\n".join(loc) + "\n"


def render(doc: dict[str, Any]) -> str:
    """``results.md`` (and the README's block) from ``results.json``'s content."""
    meta = doc["meta"]
    return (f"`{meta['command']}` ({meta['seconds'] / 60:.1f} min)\n\n"
            + markdown(doc["variants"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/chat_probe"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    facts = json.loads(FACTS.read_text())
    started = time.perf_counter()
    results = [run(args.model, v, facts) for v in args.variants]
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"command": f"python -m benchmarks.chat_probe --model {args.model}",
            "seconds": round(time.perf_counter() - started, 1)}
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "variants": results},
                                                      indent=1))
    doc = {"meta": meta, "variants": results}
    (args.out / "results.md").write_text(render(doc))
    logger.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
