"""Background prompts for any model: keys in the callers' order, cached once per model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from memory_store import Loka
from memory_store.engine import general_background
from memory_store.general_prompts import general_prompts
from memory_store.update.updater import Background


@pytest.fixture(scope="module")
def loka(default_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Loka:
    return Loka.open(tmp_path_factory.mktemp("bg"), default_model)


def test_batched_keys_keep_the_callers_order(loka: Loka):
    prompts = ["A much longer prompt about the capital city of a far away country is",
               "Hi", "The weather today is", "Q: What is the colour of the sky?\nA:"]
    batched = loka.keys(prompts)
    one_by_one = np.concatenate([loka.keys([p]) for p in prompts])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-4)


def test_background_keys_are_computed_once_and_cached(loka: Loka, tmp_path: Path):
    prompts = [f"Background prompt number {i} is" for i in range(12)]
    first = Background(prompts, loka.encoder, tmp_path)
    keys = first.keys()
    files = list(tmp_path.glob("background-*.npy"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    again = Background(prompts, loka.encoder, tmp_path).keys()
    np.testing.assert_array_equal(keys, again)
    assert files[0].stat().st_mtime_ns == stamp  # read, not written again
    other = Background(prompts[:6], loka.encoder, tmp_path).keys()  # other prompts: own file
    assert other.shape == (6, keys.shape[1])
    assert len(list(tmp_path.glob("background-*.npy"))) == 2


def test_a_damaged_cache_file_is_recomputed(loka: Loka, tmp_path: Path):
    prompts = ["One prompt", "Another prompt"]
    keys = Background(prompts, loka.encoder, tmp_path).keys()
    (path,) = tmp_path.glob("background-*.npy")
    path.write_bytes(b"not a numpy file")
    np.testing.assert_allclose(Background(prompts, loka.encoder, tmp_path).keys(), keys)


def test_general_background_for_a_chat_model_uses_its_template(loka: Loka, tmp_path: Path):
    class ChatTokenizer:
        chat_template = "{{ messages }}"

        def apply_chat_template(self, turns, tokenize, add_generation_prompt):
            return f"<|user|>{turns[0]['content']}<|assistant|>"

    user_file = tmp_path / "mine.jsonl"
    user_file.write_text('{"prompt": "Our refund policy says"}\n')
    prompts = general_background(ChatTokenizer(), user_file)
    chat = [p for p in general_prompts("train") if p.form == "chat"]
    assert f"<|user|>{chat[0].prompt}<|assistant|>" in prompts
    assert "Our refund policy says" in prompts
    heldout = {p.prompt for p in general_prompts("heldout")}
    assert not heldout & set(prompts)  # the held-out split is never a negative
