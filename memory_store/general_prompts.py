"""General prompts for any model: the gate's negatives and the retention set.

The shipped set (``data/general_prompts.jsonl``, written by ``scripts/make_general_prompts.py``)
has two splits. ``train`` prompts are gate negatives and retention prompts. ``heldout`` prompts
share neither subjects nor templates with them and exist only to *measure* the gate's
false-positive rate; nothing in the engine trains on them.

Users add their own prompts with ``LOKA_BACKGROUND_PROMPTS=file.jsonl`` (one
``{"prompt": "..."}`` object per line).

Hard negatives come from the update itself: other relations of a piece's subject ("Danielle
Darrieux was born in" when her mother tongue is edited). A piece may name its ``subject``;
otherwise :func:`guess_subject` looks for a capitalised name in the prompt.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

from memory_store.errors import InvalidInput

DATA_FILE = Path(__file__).with_name("data") / "general_prompts.jsonl"
MAX_USER_PROMPTS = 50_000
Split = Literal["train", "heldout"]


@dataclass(frozen=True)
class GeneralPrompt:
    prompt: str
    form: str  # "completion" | "question" | "chat"
    domain: str
    split: str


@lru_cache(maxsize=1)
def _all() -> tuple[GeneralPrompt, ...]:
    rows = [json.loads(line) for line in DATA_FILE.read_text().splitlines() if line.strip()]
    return tuple(GeneralPrompt(**row) for row in rows)


def general_prompts(split: Split = "train") -> list[GeneralPrompt]:
    """The shipped prompts of one split (``heldout`` is for measuring only)."""
    return [p for p in _all() if p.split == split]


def render(prompts: Sequence[GeneralPrompt],
           chat: Callable[[str], str] | None = None) -> list[str]:
    """Prompt texts as the model sees them: chat-form prompts go through ``chat`` (the
    model's chat template) when the model has one, and stay plain text otherwise."""
    out: list[str] = []
    for p in prompts:
        out.append(chat(p.prompt) if chat is not None and p.form == "chat" else p.prompt)
    return out


def load_user_prompts(path: Path | str) -> list[str]:
    """Prompts from a user's JSONL file; a bad line raises naming the file and line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"background prompts file {path}: cannot read it ({exc})",
                           field="LOKA_BACKGROUND_PROMPTS") from exc
    prompts: list[str] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise InvalidInput(f"{path}:{n}: not a JSON object ({exc.args[0]})",
                               field="LOKA_BACKGROUND_PROMPTS") from exc
        prompt = row.get("prompt") if isinstance(row, dict) else None
        if not isinstance(prompt, str) or not prompt.strip():
            raise InvalidInput(f"{path}:{n}: needs a non-empty string field 'prompt'",
                               field="LOKA_BACKGROUND_PROMPTS")
        prompts.append(prompt)
        if len(prompts) > MAX_USER_PROMPTS:
            raise InvalidInput(f"{path}: more than {MAX_USER_PROMPTS} prompts",
                               field="LOKA_BACKGROUND_PROMPTS")
    return prompts


# --- hard negatives from the update itself ------------------------------------------------

_RELATIONS = (
    "{s} was born in", "{s} died in", "{s} is best known for", "The profession of {s} is",
    "{s} is a citizen of", "{s} works in the field of", "{s} is located in",
    "The founder of {s} is", "Q: Where does {s} come from?\nA:", "Q: What is {s} famous for?\nA:",
    "Tell me about {s}.", "{s} was created in the year",
)
_NAME = re.compile(r"(?:[A-Z][\w'\-\.]*\s+)*[A-Z][\w'\-\.]*")
_STOP = {"The", "A", "An", "Q", "A:", "Question", "Answer", "What", "Who", "Which", "Where",
         "When", "How", "Why", "In", "On", "Tell", "Is", "Are", "Did", "Does", "Do"}


def guess_subject(prompt: str) -> str | None:
    """The longest capitalised name in a prompt, ignoring sentence-initial function words."""
    best: str | None = None
    for match in _NAME.finditer(prompt):
        words = [w for w in match.group(0).split() if w.rstrip(":") not in _STOP]
        name = " ".join(words).strip(" .'")
        if len(name) >= 3 and (best is None or len(name) > len(best)):
            best = name
    return best


# other subjects for "the same relation, someone else" negatives (people, places,
# organisations, things); none of them is a subject of the held-out split
OTHER_SUBJECTS = (
    "Marie Curie", "Isaac Newton", "Nelson Mandela", "Ada Lovelace", "Confucius", "Frida Kahlo",
    "Norway", "Kenya", "Peru", "Toronto", "Osaka", "the Danube", "Mount Kilimanjaro",
    "the Red Cross", "Harvard University", "Volkswagen", "the BBC", "Real Madrid",
    "the Mona Lisa", "Microsoft",
)


def swapped_negatives(prompt: str, subject: str, k: int = 4) -> list[str]:
    """``prompt`` about ``k`` other subjects ("The mother tongue of Marie Curie is" for an
    edit of Danielle Darrieux's): the same relation asked of someone else must keep the base
    model's answer. Deterministic: the subjects are chosen by a hash of the prompt."""
    if not subject or subject not in prompt:
        return []
    start = int(hashlib.sha256(prompt.encode()).hexdigest(), 16) % len(OTHER_SUBJECTS)
    others = [OTHER_SUBJECTS[(start + 5 * i) % len(OTHER_SUBJECTS)] for i in range(k)]
    return [prompt.replace(subject, other) for other in others if other != subject]


def subject_negatives(subject: str, exclude: Sequence[str] = ()) -> list[str]:
    """Prompts about other relations of ``subject``, minus the piece's own texts."""
    own = {" ".join(t.lower().split()) for t in exclude}
    out = [r.replace("{s}", subject) for r in _RELATIONS]
    return [p for p in out if " ".join(p.lower().split()) not in own]
