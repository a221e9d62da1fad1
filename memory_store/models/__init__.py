"""Base models: loading any causal LM and where LOKA hooks into it (``access``), the built-in
default model SmolLM2-135M-Instruct (``smollm2``), the small fact-trained GPT-2 that the fast
tests use (``builtin``, selectable as ``tiny``), tiny random-weight test models (``tiny``) and
chat prompts (``chat``)."""

from __future__ import annotations

from pathlib import Path

from memory_store.models.builtin import ensure_default_model
from memory_store.models.smollm2 import ensure_smollm2

# names a caller may give instead of a path or hub id
DEFAULT_MODEL = "smollm2"
BUILTIN_MODELS = ("smollm2", "tiny")


def resolve_model(model: str | Path | None, *, fetch: bool = True,
                  progress: bool = False) -> str | Path:
    """A model argument as ``from_pretrained`` takes it: None and ``"smollm2"`` give the
    converted SmolLM2-135M-Instruct folder (obtained once, see ``smollm2``), ``"tiny"`` the
    small local GPT-2 of the tests; anything else is a local directory or hub id as given."""
    name = DEFAULT_MODEL if model is None else model
    if name == "smollm2":
        return ensure_smollm2(fetch=fetch, progress=progress)
    if name == "tiny":
        return ensure_default_model(progress=progress)
    return model  # type: ignore[return-value]
