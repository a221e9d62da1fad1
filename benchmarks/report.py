"""``results.md``: the tables of a benchmark run, from its ``results.json`` content."""

from __future__ import annotations

import math
from typing import Any

from benchmarks.report_tofu import tofu_section

# (metric, header, format): "p" proportion, "n" nats
QA_COLUMNS = [
    ("edit_rel_acc", "edit rel. acc", "p"), ("edit_gen_acc", "edit gen. acc", "p"),
    ("edit_rel_em", "edit rel. EM", "p"), ("edit_gen_em", "edit gen. EM", "p"),
    ("unlearn_eff", "unlearn eff.", "p"), ("unlearn_gen", "unlearn gen.", "p"),
    ("unlearn_logp_drop", "unlearn Δlogp", "n"), ("retain_ratio", "retain", "p"),
    ("locality", "locality", "p"),
]
PKU_COLUMNS = [
    ("edit_rouge", "safe ROUGE-L", "p"), ("edit_rel_acc", "safe acc", "p"),
    ("edit_old_logp_drop", "unsafe Δlogp (edit prompts)", "n"),
    ("unlearn_eff", "unlearn eff.", "p"), ("unlearn_logp_drop", "unsafe Δlogp (unlearn)", "n"),
    ("retain_ratio", "retain", "p"), ("locality", "locality", "p"),
]
SEQ_COLUMNS = [
    ("edit_rel_acc", "edit rel. acc", "p"), ("edit_gen_acc", "edit gen. acc", "p"),
    ("unlearn_eff", "unlearn eff.", "p"), ("unlearn_gen", "unlearn gen.", "p"),
    ("retain_ratio", "retain", "p"), ("locality", "locality", "p"),
]


def _num(value: float | None, kind: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.1f}" if kind == "n" else f"{value:.2f}"


def _cell(mean: float | None, std: float | None, kind: str, seeds: int) -> str:
    text = _num(mean, kind)
    if seeds > 1 and text != "–" and std is not None and not math.isnan(std):
        text += f" ± {_num(std, kind)}"
    return text


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _routed(means: dict[str, Any]) -> str:
    """Share of request prompts / locality prompts served by a memory (single adapters serve
    every query)."""
    req, loc = means.get("routed_requests"), means.get("routed_locality")
    if req is None or (isinstance(req, float) and math.isnan(req)):
        return "all"
    return f"{_num(req, 'p')} / {_num(loc, 'p')}"


def _method_rows(methods: dict[str, Any], columns: list, seeds: int) -> list[list[str]]:
    rows = []
    for name, agg in methods.items():
        cells = [_cell(agg["mean"].get(m), agg["std"].get(m), k, seeds) for m, _, k in columns]
        cells += [_routed(agg["mean"]), f"{agg['fit_seconds']:.1f}",
                  f"{agg['footprint_bytes'] / 1024:.0f}"]
        rows.append([f"`{name}`", *cells])
    return rows


ROUTED = "adapter used (req. / loc.)"


def _columns(suite: str) -> list:
    return PKU_COLUMNS if suite == "pku" else QA_COLUMNS


def _complete(results: dict[str, Any]) -> dict[str, Any]:
    """The suites whose main part finished (a failed one may have left its sequential part)."""
    return {n: s for n, s in results["suites"].items() if "settings" in s}


def _models(results: dict[str, Any]) -> str:
    rows = []
    for name, s in _complete(results).items():
        m = s["model"]
        k = m.get("knowledge", {})
        rows.append([name, str(m.get("n_params", "?")), _num(k.get("acc_canonical"), "p"),
                     _num(k.get("acc_paraphrase"), "p"), _num(k.get("acc_general"), "p"),
                     str(k.get("train_steps", "–")), f"{k.get('train_seconds', 0):.0f}",
                     "pretrained, not trained here" if m.get("prepared") is False
                     else "yes" if m.get("built_in_run") else "no (cached)"])
    return _table(["suite", "params", "canonical", "paraphrases", "general (locality)",
                   "train steps", "train s", "built in this run"], rows)


def _headline(name: str, suite: dict[str, Any], seeds: int) -> list[str]:
    cols = _columns(name)
    header = ["method", *[h for _, h, _ in cols], ROUTED, "fit s", "footprint KiB"]
    out = []
    for sname, s in suite["settings"].items():
        bk = s["base_knowledge"]
        out.append(f"#### {name} / {sname}: {s['description']}\n")
        out.append(f"Base model before the update: forgotten answers reproduced "
                   f"{_num(bk['unlearn_answer_rouge'], 'p')} (ROUGE-L recall; paraphrases "
                   f"{_num(bk['unlearn_paraphrase_rouge'], 'p')}), retain set "
                   f"{_num(bk['retain_rouge'], 'p')}, locality answers "
                   f"{_num(bk['locality_answer_rouge'], 'p')}.\n")
        out.append(_table(header, _method_rows(s["methods"], cols, seeds)) + "\n")
    return out


def _ablations(name: str, suite: dict[str, Any]) -> list[str]:
    cols = _columns(name)
    header = ["variant", *[h for _, h, _ in cols], ROUTED, "fit s", "footprint KiB"]
    out = []
    for sname, s in suite["settings"].items():
        if not s.get("ablations"):
            continue
        rows: dict[str, Any] = {}
        if "loka" in s["methods"]:
            first = s["methods"]["loka"]["runs"][0]
            rows[f"loka (seed {first['seed']})"] = _single(first)
        rows.update(s["ablations"])
        out.append(f"#### {name} / {sname}\n")
        out.append(_table(header, _method_rows(rows, cols, 1)) + "\n")
    return out


def _single(record: dict[str, Any]) -> dict[str, Any]:
    return {"mean": record["metrics"], "std": {}, "fit_seconds": record["fit_seconds"],
            "footprint_bytes": record["footprint_bytes"]}


def _density(name: str, d: dict[str, Any]) -> str:
    cols = [c for c in _columns(name) if c[2] == "p"]
    header = ["capacity", "memories", "footprint KiB", *[h for _, h, _ in cols], "fit s"]
    rows = []
    for p in d["points"]:
        cap = "all" if p["capacity"] >= 10_000 else str(p["capacity"])
        rows.append([cap, str(p["info"].get("memories", "?")),
                     f"{p['footprint_bytes'] / 1024:.0f}",
                     *[_num(p["metrics"].get(m), k) for m, _, k in cols],
                     f"{p['fit_seconds']:.1f}"])
    return _table(header, rows)


def _sequential(seq: dict[str, Any]) -> str:
    header = ["method", "T", *[h for _, h, _ in SEQ_COLUMNS], "update s (total)",
              "footprint KiB"]
    rows = []
    for curve in seq["curves"]:
        for p in curve["points"]:
            rows.append([f"`{curve['method']}`", str(p["T"]),
                         *[_num(p["metrics"].get(m), k) for m, _, k in SEQ_COLUMNS],
                         f"{p['update_seconds']:.0f}", f"{p['footprint_bytes'] / 1024:.0f}"])
    lines = [_table(header, rows)]
    flat = [(c["method"], c["flatness"]) for c in seq["curves"]
            if (c.get("flatness") or {}).get("ratio") is not None]
    if flat:
        lines.append("\nUpdate cost against T (seconds per piece, first against last quarter of "
                     "the updates, the first update left out; about 1 = flat):\n")
        lines.append(_table(["method", "first quarter s/piece", "last quarter s/piece", "ratio"],
                            [[f"`{m}`", f"{f['first_quarter_s_per_piece']:.2f}",
                              f"{f['last_quarter_s_per_piece']:.2f}", f"{f['ratio']:.2f}"]
                             for m, f in flat]))
    return "\n".join(lines)


def conflict_section(c: dict[str, Any]) -> str:
    """The conflict analysis: per pair set its cosines' summary (and LOKA's decisions when the
    run has them), then, when present, the in- vs out-profile tests and the warm-up
    trajectory."""
    rows = []
    for label in ("in_profile", "out_profile"):
        h = c[label]
        decisions = c.get("loka_decisions", {}).get(label, [])
        # a split records its decision on both memories it makes
        split = sum(d["decision"] == "split" for d in decisions) // 2
        mgda = sum(d["decision"] == "mgda" for d in decisions)
        rows.append([label, str(h["n"]), _num(h["mean"], "p"),
                     _num(h["share_nonpositive"], "p"),
                     f"{split} split / {mgda} MGDA" if decisions else "–"])
    out = []
    if "warmup_steps" in c:
        out.append(f"Gradients after {c['warmup_steps']} warm-up steps (the engine's conflict "
                   "score).\n")
    out.append(_table(["pairs", "n", "mean cosine", "share cos <= 0",
                       "LOKA's mixed clusters (all seeds)"], rows))
    if "stats" in c:
        st = c["stats"]
        out.append("\nIn-profile vs out-profile cosines:\n")
        out.append(_table(["test", "statistic", "p-value"], [
            ["Kolmogorov–Smirnov D", f"{st['ks']['statistic']:.3f}", f"{st['ks']['p_value']:.3g}"],
            ["Mann–Whitney U (effect U/nm)",
             f"{st['mann_whitney']['statistic']:.1f} "
             f"({st['mann_whitney']['effect']:.2f})", f"{st['mann_whitney']['p_value']:.3g}"],
            ["permutation, mean difference",
             f"{st['permutation']['statistic']:+.3f}", f"{st['permutation']['p_value']:.3g}"],
        ]))
    if "trajectory" in c:
        out.append("\nMean cosine (share <= 0) by warm-up steps:\n")
        out.append(_table(["warm-up steps", "in-profile", "out-profile"], [
            [str(t["warmup_steps"]),
             *(f"{t[k]['mean']:+.3f} ({t[k]['share_nonpositive']:.2f})"
               for k in ("in_profile", "out_profile"))] for t in c["trajectory"]]))
    if "per_seed" in c:
        steps = list(c["per_seed"][0]["trajectory"])
        out.append("\nEvery seed (adapter initialisation), after "
                   f"{c.get('warmup_steps', '?')} warm-up steps; the trajectory as in / out "
                   "mean cosine:\n")
        out.append(_table(
            ["seed", "mean in / out", "share <= 0 in / out", "mean diff.", "KS p", "MW p",
             "perm. p", *(f"{s} steps" for s in steps)],
            [[str(r["seed"]), f"{r['mean_in_profile']:+.3f} / {r['mean_out_profile']:+.3f}",
              f"{r['share_nonpositive_in_profile']:.2f} / "
              f"{r['share_nonpositive_out_profile']:.2f}",
              f"{r['mean_difference']:+.3f}", f"{r['ks_p']:.3g}", f"{r['mann_whitney_p']:.3g}",
              f"{r['permutation_p']:.3g}",
              *(f"{v[0]:+.2f} / {v[1]:+.2f}" for v in r["trajectory"].values())]
             for r in c["per_seed"]]))
    return "\n".join(out)


def render(results: dict[str, Any]) -> str:
    """The whole ``results.md``."""
    meta = results["meta"]
    b = meta["budget"]
    seeds = len(meta["seeds"])
    out = [f"# LOKA benchmark results ({meta['scale']} scale)\n",
           f"Command: `{meta['command']}`  \nWall time: {meta['seconds'] / 60:.1f} min, base "
           f"model preparation included ({meta['platform']}, torch {meta['torch']}, "
           f"{meta.get('jobs', 1)} worker process(es) of one torch thread)  \n"
           f"Seeds: {meta['seeds']} (headline: mean ± sample std; ablations, density, "
           f"sequential and conflict: seed {meta['seeds'][0]})\n",
           f"Budget, the same for every method: LoRA rank {b['rank']} (alpha {b['alpha']}) on "
           f"the same layers (GRACE and WISE: one FFN layer); rounds of {b['steps']} "
           f"optimisation steps per piece (LOKA: full-batch steps per memory of <= "
           f"{b['batch_pieces']} pieces; single adapters: epochs of mini-batches of "
           f"{b['batch_pieces']} pieces), and up to {b.get('verify_rounds', 0)} more rounds "
           f"while the method's greedy output on its own training prompts has not reached its "
           f"targets (at most {b['steps'] * (1 + b.get('verify_rounds', 0))} steps per piece); "
           f"learning rate {b['learning_rate']}; <= {b['max_retain']} retain rows per step; "
           f"early stop when every target is met (checked every {b['check_every']} "
           f"steps / epochs).\n",
           "Metrics (LOKA.md section 4): *acc* = teacher-forced token accuracy of the target; "
           "*EM* = greedy output starts with the target; *unlearn eff./gen.* = 1 − ROUGE-L "
           "recall of the forgotten answer in the greedy output on the prompt / held-out "
           "paraphrase; *Δlogp* = drop of the answer's summed log-probability against the base "
           "(nats); *retain* = ROUGE-L recall on untouched known facts, as a ratio to the "
           "base's; *locality* = token agreement of greedy outputs on general prompts before "
           "and after; *adapter used* = share of request prompts (with paraphrases) / locality "
           "prompts that a codebook method served with a memory rather than the base model. "
           "Paraphrases are never given to any method.\n",
           "## Base models (knowledge before any update: the ceiling of retain)\n",
           _models(results) + "\n", "## Headline: LOKA against the baselines\n"]
    if results.get("failures"):
        out.insert(1, "**Failed parts** (the tables below lack them):\n\n" + "\n".join(
            f"- {f['suite']} / {f['part']}: `{f['error']}`" for f in results["failures"])
            + "\n")
    for name, suite in _complete(results).items():
        out += _headline(name, suite, seeds)
    for name, suite in _complete(results).items():
        out += tofu_section(name, suite, seeds)
    if any(s["settings"][k].get("ablations") for s in _complete(results).values()
           for k in s["settings"]):
        out.append(f"## Ablations (seed {meta['seeds'][0]})\n")
        for name, suite in _complete(results).items():
            out += _ablations(name, suite)
    for name, suite in results["suites"].items():
        if "sequential" in suite:
            seq = suite["sequential"]
            out.append(f"## Sequential protocol: {name}, batches of {seq['batch']}, evaluated "
                       f"on all T requests so far (`sequential_{name}.png`)\n")
            out.append(_sequential(seq) + "\n")
    for name, suite in results["suites"].items():
        if "density" in suite:
            out.append(f"## Storage density: {name} / {suite['density']['setting']} "
                       f"(`density_{name}.png`)\n")
            out.append(_density(name, suite["density"]) + "\n")
    for name, suite in results["suites"].items():
        if "conflict" in suite:
            out.append(f"## Conflict between edit and unlearn gradients: {name} "
                       f"(`conflict_{name}.png`)\n")
            out.append(conflict_section(suite["conflict"]) + "\n")
    out.append("## Data (sha256)\n")
    hashes = {k: v for s in _complete(results).values() for k, v in s["data_sha256"].items()}
    out.append("\n".join(f"- `{k}`: `{v}`" for k, v in sorted(hashes.items())) + "\n")
    return "\n".join(out)
