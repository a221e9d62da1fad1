"""Request limits as 422s naming the field: from the settings (counts and lengths) and from the
model (its context length: prompt tokens + new tokens must fit in it)."""

from __future__ import annotations

from collections.abc import Sequence

from service.config import Settings
from service.errors import invalid
from service.scheduler import GenerationScheduler as Generator
from service.schemas import UpdateRequest

MAX_STOP_CHARS = 200
# temperatures below this sample greedily (as vLLM does): dividing logits by ~0 overflows
GREEDY_BELOW = 1e-5


def sampling_temperature(temperature: float) -> float:
    """The temperature handed to the engine: 0 (greedy) for values too small to divide by."""
    return 0.0 if temperature < GREEDY_BELOW else temperature


def check_text(settings: Settings, field: str, text: str, max_chars: int | None = None) -> None:
    """Reject a text longer than ``max_chars`` (default: the prompt limit) or one that is not
    valid Unicode: JSON can carry a lone surrogate (``"\\ud800"``), which no tokenizer takes."""
    limit = settings.max_prompt_chars if max_chars is None else max_chars
    if len(text) > limit:
        raise invalid(field, f"at most {limit} characters (got {len(text)})")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise invalid(field, f"not valid Unicode: a lone surrogate at character {exc.start} "
                             f"({text[exc.start]!a})") from None


def check_generation(
    settings: Settings, max_new_tokens: int, stop: Sequence[str], tokens_field: str
) -> None:
    """Reject a token budget above the cap and too many or too long stop sequences."""
    if max_new_tokens > settings.max_new_tokens:
        raise invalid(tokens_field, f"at most {settings.max_new_tokens} (got {max_new_tokens})")
    if len(stop) > settings.max_stop_sequences:
        raise invalid("stop", f"at most {settings.max_stop_sequences} stop sequences")
    for i, s in enumerate(stop):
        check_text(settings, f"stop.{i}", s, MAX_STOP_CHARS)


def check_min_tokens(min_tokens: int, max_tokens: int, tokens_field: str) -> None:
    """``min_tokens`` must not exceed the completion's token budget ``max_tokens``."""
    if min_tokens > max_tokens:
        raise invalid("min_tokens", f"at most {tokens_field} ({max_tokens}); got {min_tokens}")


def check_update(settings: Settings, body: UpdateRequest) -> None:
    """Counts and lengths of an update; at least one edit or unlearn piece."""
    n = len(body.edits) + len(body.unlearn)
    if n == 0:
        raise invalid("edits", "an update needs at least one edit or unlearn piece")
    if n > settings.max_pieces_per_update:
        raise invalid(
            "edits" if body.edits else "unlearn",
            f"at most {settings.max_pieces_per_update} edit and unlearn pieces per update "
            f"(got {n})",
        )
    if len(body.retain) > settings.max_retain:
        raise invalid(
            "retain", f"at most {settings.max_retain} retain prompts (got {len(body.retain)})"
        )
    for name, pieces in (("edits", body.edits), ("unlearn", body.unlearn)):
        for i, p in enumerate(pieces):
            check_text(settings, f"{name}.{i}.prompt", p.prompt)
            check_text(settings, f"{name}.{i}.target", p.target, settings.max_target_chars)
            if len(p.paraphrases) > settings.max_paraphrases:
                raise invalid(
                    f"{name}.{i}.paraphrases",
                    f"at most {settings.max_paraphrases} paraphrases (got {len(p.paraphrases)})",
                )
            for j, q in enumerate(p.paraphrases):
                check_text(settings, f"{name}.{i}.paraphrases.{j}", q)
    for i, r in enumerate(body.retain):
        check_text(settings, f"retain.{i}.prompt", r.prompt)
        check_text(settings, f"retain.{i}.target", r.target, settings.max_target_chars)
    for name in ("steps", "max_steps"):
        steps = getattr(body.options, name)
        if steps is not None and steps > settings.max_train_steps:
            raise invalid(f"options.{name}",
                          f"at most {settings.max_train_steps} (got {steps})")


def check_prompt_tokens(generator: Generator, settings: Settings, prompt: str,
                        field: str) -> None:
    """The configured cap on prompt tokens. Blocking (tokenizes)."""
    n = generator.count_tokens(prompt)
    if n > settings.max_prompt_tokens:
        raise invalid(field, f"at most {settings.max_prompt_tokens} prompt tokens (got {n})")


def fit_context(
    generator: Generator, settings: Settings, context: int | None, prompt: str,
    prompt_field: str, max_new_tokens: int | None, tokens_field: str, default: int,
) -> int:
    """The token budget of a generation within the model's ``context`` (None: unknown), after
    the configured cap on prompt tokens: a prompt that leaves no room is a 422 on
    ``prompt_field``, an explicit ``max_new_tokens`` that does not fit one on
    ``tokens_field``; the ``default`` (None asked) is cut to what fits. Blocking."""
    check_prompt_tokens(generator, settings, prompt, prompt_field)
    budget = default if max_new_tokens is None else max_new_tokens
    if context is None:
        return budget
    n = generator.count_tokens(prompt, special=True)
    if n >= context:
        raise invalid(prompt_field, f"{n} tokens, but the model's context holds {context} "
                                    f"(prompt and new tokens together)")
    room = context - n
    if budget <= room:
        return budget
    if max_new_tokens is None:
        return room
    raise invalid(tokens_field, f"at most {room} for this prompt: {n} prompt tokens + "
                                f"{budget} new tokens exceed the model's context of {context}")


def check_route_prompt(generator: Generator, context: int | None, prompt: str) -> None:
    """A prompt to route must fit in the model's context. Blocking (tokenizes)."""
    if context is None:
        return
    n = generator.count_tokens(prompt, special=True)
    if n > context:
        raise invalid("prompt", f"{n} tokens, but the model's context holds {context}")
