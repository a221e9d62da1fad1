"""Fixtures of the benchmark tests: a tiny random-weight GPT-2 with the built-in tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from memory_store.models.tiny import build_tiny_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    return build_tiny_model("gpt2", tmp_path_factory.mktemp("tiny") / "gpt2")
