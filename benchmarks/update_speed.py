"""POST-to-served time of an update on a real model, per stage, and whether each piece took.

Scenarios on a fresh store each: (a) 1 edit, (b) 20 edits + 20 unlearning requests in ONE
update. Facts are CounterFact rows whose true answer the base model reproduces greedily; edits
teach the counterfactual target (prompt + its rephrase as paraphrase), unlearning requests
remove the true answer of other rows. After the update: greedy edit success (prompt and
paraphrase), unlearned answer gone, locality prompts token-identical to the base, and sampled
success at temperature 1 (``--samples`` per edited / unlearned prompt).

    python -m benchmarks.update_speed --model /tmp/smol/hf --out benchmarks/results/update_speed/
"""

from __future__ import annotations

import argparse
import cProfile
import json
import logging
import os
import pstats
import tempfile
import time
from pathlib import Path

import torch

from memory_store import Loka, LokaConfig
from memory_store.types import GenerationRequest, PieceKind, PieceSpec, UpdateOptions

logger = logging.getLogger(__name__)

COUNTERFACT = Path(__file__).resolve().parents[2] / "shared" / "data" / "counterfact" / "counterfact.jsonl"


def _gen(loka: Loka, prompts: list[str], n: int, memory: str = "auto", temperature: float = 0.0,
         seed: int | None = None, batch: int = 32):
    out = []
    for i in range(0, len(prompts), batch):
        out += loka.generate([GenerationRequest(p, n, temperature=temperature, memory=memory,
                                                seed=None if seed is None else seed + i + j)
                              for j, p in enumerate(prompts[i:i + batch])])
    return out


def _starts(text: str, target: str) -> bool:
    return text.strip().startswith(target.strip())


def select_facts(loka: Loka, path: Path, need: int, cache: Path) -> list[dict]:
    """CounterFact rows (distinct subjects) whose true answer the base gives greedily."""
    if cache.is_file():
        rows = json.loads(cache.read_text())
        if len(rows) >= need:
            return rows[:need]
    rows, seen = [], set()
    for line in path.open():
        r = json.loads(line)
        if r["subject"] in seen or not r["rephrase_prompt"].strip():
            continue
        seen.add(r["subject"])
        rows.append(r)
    picked = []
    for i in range(0, len(rows), 64):
        chunk = [r for r, hit in zip(rows[i:i + 64], _first_token_hits(loka, rows[i:i + 64]),
                                     strict=True) if hit]
        if not chunk:
            continue
        outs = _gen(loka, [r["prompt"] for r in chunk], 4, memory="none")
        picked += [r for r, o in zip(chunk, outs, strict=True)
                   if _starts(o.text, r["ground_truth"])]
        if len(picked) >= need:
            break
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(picked[:need], indent=1))
    logger.info("selected %d facts the base knows", len(picked[:need]))
    return picked[:need]


@torch.no_grad()
def _first_token_hits(loka: Loka, rows: list[dict]) -> list[bool]:
    """Cheap screen: the base's next-token argmax is the answer's first token."""
    tok = loka.tokenizer
    enc = tok([r["prompt"] for r in rows], return_tensors="pt", padding=True,
              padding_side="left")
    pos = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    logits = loka.model(**enc, position_ids=pos, use_cache=False).logits[:, -1]
    firsts = [tok(" " + r["ground_truth"], add_special_tokens=False)["input_ids"][0]
              for r in rows]
    return [int(a) == f for a, f in zip(logits.argmax(-1), firsts, strict=True)]


class StageClock:
    """Wall time between the update's progress stages (keys, conflict, train, router, publish)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.last_stage = "start"
        self.last_t = self.start
        self.seconds: dict[str, float] = {}

    def __call__(self, stage: str, _step: int, _total: int) -> None:
        now = time.perf_counter()
        if stage != self.last_stage:
            self.seconds[self.last_stage] = self.seconds.get(self.last_stage, 0.0) + (
                now - self.last_t)
            self.last_stage, self.last_t = stage, now

    def finish(self) -> dict[str, float]:
        self("end", 0, 0)
        return {k: round(v, 2) for k, v in self.seconds.items()}


def run_scenario(model: str, name: str, edits: list[dict], unlearns: list[dict],
                 locality: list[dict], config: LokaConfig | None, samples: int,
                 profile_dir: Path | None, options: UpdateOptions | None) -> dict:
    pieces = [PieceSpec(PieceKind.EDIT, r["prompt"], " " + r["target_new"],
                        (r["rephrase_prompt"],)) for r in edits]
    pieces += [PieceSpec(PieceKind.UNLEARN, r["prompt"], " " + r["ground_truth"],
                         (r["rephrase_prompt"],)) for r in unlearns]
    with tempfile.TemporaryDirectory() as tmp:
        loka = Loka.open(Path(tmp), model=model, config=config)
        loc_prompts = [r["locality_prompt"] for r in locality]
        base_loc = _gen(loka, loc_prompts, 8, memory="none")
        clock = StageClock()
        prof = cProfile.Profile() if profile_dir is not None else None
        start, cpu_start = time.perf_counter(), time.process_time()
        if prof is not None:
            prof.enable()
        result = loka.update(pieces, options=options, progress=clock)
        if prof is not None:
            prof.disable()
        seconds = time.perf_counter() - start
        # on a shared machine wall time mostly measures the other processes: CPU seconds of
        # this process (all its threads) are the comparable number
        cpu_seconds = time.process_time() - cpu_start
        stages = clock.finish()
        if prof is not None:
            profile_dir.mkdir(parents=True, exist_ok=True)
            stats_file = profile_dir / f"{name}.txt"
            with stats_file.open("w") as fh:
                pstats.Stats(prof, stream=fh).sort_stats("cumulative").print_stats(60)
        # served checks
        e_prompts = [q for r in edits for q in (r["prompt"], r["rephrase_prompt"])]
        e_targets = [r["target_new"] for r in edits for _ in range(2)]
        u_prompts = [q for r in unlearns for q in (r["prompt"], r["rephrase_prompt"])]
        u_targets = [r["ground_truth"] for r in unlearns for _ in range(2)]
        e_out = _gen(loka, e_prompts, 6)
        u_out = _gen(loka, u_prompts, 16)
        loc_out = _gen(loka, loc_prompts, 8)
        edit_ok = [_starts(o.text, t) for o, t in zip(e_out, e_targets, strict=True)]
        unlearn_ok = [t.strip() not in o.text for o, t in zip(u_out, u_targets, strict=True)]
        metrics = {
            "edit_greedy_prompt": _rate(edit_ok[0::2]),
            "edit_greedy_paraphrase": _rate(edit_ok[1::2]),
            "unlearn_gone_prompt": _rate(unlearn_ok[0::2]),
            "unlearn_gone_paraphrase": _rate(unlearn_ok[1::2]),
            "locality_token_identical": _rate([a.text == b.text for a, b in
                                               zip(loc_out, base_loc, strict=True)]),
        }
        if samples:
            sp = [r["prompt"] for r in edits for _ in range(samples)]
            st = [r["target_new"] for r in edits for _ in range(samples)]
            so = _gen(loka, sp, 6, temperature=1.0, seed=1000)
            metrics["edit_sampled_t1"] = _rate([_starts(o.text, t)
                                                for o, t in zip(so, st, strict=True)])
            up = [r["prompt"] for r in unlearns for _ in range(samples)]
            ut = [r["ground_truth"] for r in unlearns for _ in range(samples)]
            uo = _gen(loka, up, 16, temperature=1.0, seed=5000)
            metrics["unlearned_answer_sampled_t1"] = _rate([t.strip() in o.text
                                                            for o, t in zip(uo, ut, strict=True)])
        report = {
            "scenario": name, "n_edit": len(edits), "n_unlearn": len(unlearns),
            "update_seconds": round(seconds, 2), "update_cpu_seconds": round(cpu_seconds, 2),
            "load_average": list(os.getloadavg()), "stages": stages,
            "memories": len(loka.memories()),
            "decisions": {k: v.decision for k, v in result.decisions.items()},
            "metrics": metrics,
            "result": {k: v for k, v in vars(result).items()
                       if k in ("pieces_failed", "stage_seconds", "steps")},
        }
        if hasattr(result, "pieces_failed"):
            report["pieces_failed"] = [vars(f) if hasattr(f, "__dict__") else f
                                       for f in result.pieces_failed]
        loka.close()
    return report


def _rate(flags: list[bool]) -> float:
    return round(sum(flags) / max(len(flags), 1), 4)


def to_markdown(reports: list[dict], label: str) -> str:
    stages = sorted({s for r in reports for s in r["stages"]})
    head = "| scenario | wall s | CPU s | " + " | ".join(stages) + " |"
    sep = "|---" * (3 + len(stages)) + "|"
    rows = [f"| {r['scenario']} | {r['update_seconds']} | {r.get('update_cpu_seconds', '')} | "
            + " | ".join(str(r["stages"].get(s, "")) for s in stages) + " |" for r in reports]
    mnames = sorted({m for r in reports for m in r["metrics"]})
    mhead = "| scenario | " + " | ".join(mnames) + " |"
    msep = "|---" * (1 + len(mnames)) + "|"
    mrows = [f"| {r['scenario']} | " + " | ".join(str(r["metrics"].get(m, "")) for m in mnames)
             + " |" for r in reports]
    engine = sorted({s for r in reports for s in r["result"].get("stage_seconds", {})})
    ehead = "| scenario | " + " | ".join(engine) + " |"
    esep = "|---" * (1 + len(engine)) + "|"
    erows = [f"| {r['scenario']} | " + " | ".join(
        str(round(r["result"].get("stage_seconds", {}).get(s, 0.0), 1)) for s in engine) + " |"
        for r in reports]
    fails = [f"- {r['scenario']}: {f['piece_id']} {f['reason']}" for r in reports
             for f in r.get("pieces_failed", [])]
    text = (f"### {label}\n\nStages by progress callback (s):\n\n{head}\n{sep}\n"
            + "\n".join(rows) + "\n\n" + f"{mhead}\n{msep}\n" + "\n".join(mrows) + "\n")
    if engine:
        text += ("\nEngine stage timers (UpdateResult.stage_seconds, s):\n\n"
                 f"{ehead}\n{esep}\n" + "\n".join(erows) + "\n")
    text += "\nPieces failed: " + ("none\n" if not fails else "\n" + "\n".join(fails) + "\n")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/update_speed"))
    parser.add_argument("--label", default="run")
    parser.add_argument("--scenarios", default="1,20+20")
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--profile", action="store_true", help="cProfile each update")
    parser.add_argument("--config", type=Path, help="LokaConfig JSON")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = (LokaConfig.model_validate_json(args.config.read_text())
              if args.config else None)
    with tempfile.TemporaryDirectory() as tmp:
        probe = Loka.open(Path(tmp), model=args.model)
        facts = select_facts(probe, COUNTERFACT, 45, args.out / "facts.json")
        probe.close()
    reports = []
    for sc in args.scenarios.split(","):
        if sc == "1":
            edits, unlearns = facts[:1], []
        else:
            ne, nu = (int(x) for x in sc.split("+"))
            edits, unlearns = facts[:ne], facts[ne:ne + nu]
        locality = facts[40:45]
        reports.append(run_scenario(args.model, sc, edits, unlearns, locality, config,
                                    args.samples,
                                    args.out / "profiles" / args.label if args.profile else None,
                                    None))
        logger.info("%s", json.dumps(reports[-1], indent=1))
    meta = {"label": args.label, "threads": torch.get_num_threads(), "model": args.model,
            "reports": reports}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.label}.json").write_text(json.dumps(meta, indent=2))
    (args.out / f"{args.label}.md").write_text(to_markdown(reports, args.label))


if __name__ == "__main__":
    main()
