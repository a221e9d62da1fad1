"""The gate's false positives on SmolLM2 (or any model), before and after general negatives.

One update of 10 edits + 10 unlearning requests (CounterFact facts the base model knows,
``benchmarks/results/update_speed/facts.json``) on a fresh store per setting:

- ``calibration``: the old behaviour for a non-built-in model: the gate's only negatives are
  the 32+ calibration prompts, no hard negatives from the update;
- ``general``: the shipped general prompt set (``train`` split) and hard negatives from each
  piece's subject (the default now).

Measured after the update (routing only, nothing generated): the share of prompts sent to a
memory among (a) the 200 held-out general prompts (never a negative: the ``heldout`` split),
(b) held-out same-subject prompts (templates that no hard negative uses), and (c) the edited
prompts and their rephrases (which should be routed).

    python -m benchmarks.gate_fp --model smollm2 --out benchmarks/results/gate_fp/
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

from memory_store import Loka
from memory_store.general_prompts import general_prompts, render
from memory_store.keys import CALIBRATION_PROMPTS
from memory_store.models.chat import has_template, user_prompt
from memory_store.types import PieceKind, PieceSpec, UpdateOptions

logger = logging.getLogger(__name__)

FACTS = Path(__file__).resolve().parent / "results" / "update_speed" / "facts.json"
# same-subject prompts for measuring only: no template of general_prompts.subject_negatives
SAME_SUBJECT = ("{s} is married to", "People still remember {s} because",
                "Q: What is the history of {s}?\nA:", "The most surprising thing about {s} is",
                "{s} has been praised for")


def run(model: str, setting: str, facts: list[dict]) -> dict:
    edits, unlearns = facts[:10], facts[10:20]
    pieces = [PieceSpec(PieceKind.EDIT, r["prompt"], " " + r["target_new"],
                        (r["rephrase_prompt"],), r["subject"]) for r in edits]
    pieces += [PieceSpec(PieceKind.UNLEARN, r["prompt"], " " + r["ground_truth"],
                         (r["rephrase_prompt"],), r["subject"]) for r in unlearns]
    with tempfile.TemporaryDirectory() as store:
        background = list(CALIBRATION_PROMPTS) if setting == "calibration" else None
        loka = Loka.open(store, model=model, background_prompts=background)
        t0 = time.perf_counter()
        loka.update(pieces, options=UpdateOptions(hard_negatives=setting != "calibration"))
        seconds = time.perf_counter() - t0
        chat = (lambda t: user_prompt(loka.tokenizer, t)) if has_template(loka.tokenizer) else None
        heldout = render(general_prompts("heldout"), chat)
        same = [t.replace("{s}", r["subject"]) for r in edits + unlearns for t in SAME_SUBJECT]
        stored = [q for p in pieces for q in (p.prompt, *p.paraphrases)]

        def routed(prompts: list[str]) -> float:
            return sum(r.memory_id is not None for r in loka.route(prompts)) / len(prompts)

        out = {"setting": setting, "update_seconds": round(seconds, 1),
               "heldout_general_fp": routed(heldout), "n_heldout_general": len(heldout),
               "same_subject_fp": routed(same), "n_same_subject": len(same),
               "stored_routed": routed(stored), "n_stored": len(stored)}
        loka.close()
    logger.info("%s", out)
    return out


def write(rows: list[dict], out: Path, command: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = ["# Gate false positives on SmolLM2-135M-Instruct", "", f"`{command}`", "",
             "One update of 10 edits + 10 unlearning requests per setting (CounterFact facts the "
             "base knows). Share of prompts the gate sends to a memory:", "",
             "| setting | held-out general prompts (FP) | same-subject prompts (FP) | "
             "stored prompts + rephrases (should be 1) | update s |",
             "| --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['setting']} | {r['heldout_general_fp']:.3f} "
                     f"(n={r['n_heldout_general']}) | {r['same_subject_fp']:.3f} "
                     f"(n={r['n_same_subject']}) | {r['stored_routed']:.3f} (n={r['n_stored']}) "
                     f"| {r['update_seconds']} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gate_fp"))
    parser.add_argument("--settings", default="calibration,general")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    facts = json.loads(FACTS.read_text())
    rows = [run(args.model, s, facts) for s in args.settings.split(",")]
    write(rows, args.out, f"python -m benchmarks.gate_fp --model {args.model}")


if __name__ == "__main__":
    main()
