"""The built-in default model: a small GPT-2 trained on CPU on facts about fictional entities.

``ensure_default_model()`` builds it on first use (no download, no model hub) and caches it.
(``memory_store.models.tiny`` saves tiny random-weight GPT-2 and Llama models with the same
tokenizer, for tests that must cover several architectures.)
"""

from .builder import (
    BUILDER_VERSION,
    build_tokenizer,
    default_model_hash,
    default_model_info,
    default_model_path,
    ensure_default_model,
    evaluate_default_model,
)
from .corpus import (
    ANSWER_POOLS,
    ENTITIES,
    FACTS,
    GENERAL_PROMPTS,
    GENERAL_TARGETS,
    GENERAL_TEXT,
    RELATION_TEMPLATES,
    Fact,
    counterfactual_answer,
    facts_by_relation,
    find_fact,
)

__all__ = [
    "ANSWER_POOLS",
    "BUILDER_VERSION",
    "ENTITIES",
    "FACTS",
    "GENERAL_PROMPTS",
    "GENERAL_TARGETS",
    "GENERAL_TEXT",
    "RELATION_TEMPLATES",
    "Fact",
    "build_tokenizer",
    "counterfactual_answer",
    "default_model_hash",
    "default_model_info",
    "default_model_path",
    "ensure_default_model",
    "evaluate_default_model",
    "facts_by_relation",
    "find_fact",
]
