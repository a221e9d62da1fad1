"""The ``loka`` command line, run as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

from memory_store.models.builtin import counterfactual_answer, find_fact


def _loka(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service.cli", *args], capture_output=True,
                          text=True, timeout=600)


def test_update_generate_memories(tmp_path, default_model):
    fact = find_fact("Orlenia", "currency")
    target = counterfactual_answer(fact)
    updates = tmp_path / "u.jsonl"
    updates.write_text("\n".join(json.dumps(line) for line in [
        {"kind": "edit", "prompt": fact.prompts[0], "target": " " + target,
         "paraphrases": [fact.prompts[1]]},
        {"kind": "retain", "prompt": "The capital of Orlenia is"},
    ]) + "\n")
    store = str(tmp_path / "store")
    done = _loka("update", "--store", store, "--file", str(updates))
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["codebook_version"] == 1 and len(summary["memories_created"]) == 1

    gen = _loka("generate", "--store", store, fact.prompts[0], "--json", "--max-new-tokens", "6")
    assert gen.returncode == 0, gen.stderr
    result = json.loads(gen.stdout)
    assert target in result["text"] and result["memory_id"] == summary["memories_created"][0]

    mems = json.loads(_loka("memories", "--store", store).stdout)
    assert mems["codebook"]["n_memories"] == 1

    base = _loka("generate", "--store", store, fact.prompts[0], "--memory", "none")
    assert base.returncode == 0 and target not in base.stdout


def test_errors_name_line_and_field(tmp_path, default_model):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"kind": "edit", "prompt": "a", "target": " b"}\n{"kind": "edit"}\n')
    proc = _loka("update", "--store", str(tmp_path / "s"), "--file", str(bad))
    assert proc.returncode == 2
    assert "bad.jsonl:2" in proc.stderr and "prompt" in proc.stderr
    unknown = _loka("generate", "--store", str(tmp_path / "s2"), "hi", "--memory", "mem_000777")
    assert unknown.returncode == 2 and "not_found" in unknown.stderr
