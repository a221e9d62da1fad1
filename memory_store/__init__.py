"""LOKA: conflict-aware editing and unlearning with a knowledge codebook of LoRA memories.

Importing this package loads no model; ``Loka.open`` does.
"""

from memory_store.config import LokaConfig
from memory_store.engine import Loka, Score, StreamChunk

__all__ = ["Loka", "LokaConfig", "Score", "StreamChunk"]
