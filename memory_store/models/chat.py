"""Chat prompts: the tokenizer's chat template when the model has one, else plain
``"Role: text"`` lines ending in ``"\\nAssistant:"`` so the model continues as the assistant."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

ROLE_NAMES = {"system": "System", "developer": "System", "user": "User",
              "assistant": "Assistant", "tool": "Tool"}


def has_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_turns(tokenizer: Any, turns: Sequence[dict[str, str]]) -> str:
    """The prompt of a conversation (``[{"role", "content"}]``), ready for generation.
    Template errors (a template that rejects the conversation) propagate."""
    if has_template(tokenizer):
        return tokenizer.apply_chat_template(list(turns), tokenize=False,
                                             add_generation_prompt=True)
    lines = [f"{ROLE_NAMES[t['role']]}: {t['content']}" for t in turns]
    return "\n".join(lines) + "\nAssistant:"


def user_prompt(tokenizer: Any, text: str) -> str:
    """One user message as the model's chat prompt."""
    return render_turns(tokenizer, [{"role": "user", "content": text}])
