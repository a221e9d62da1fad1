"""LRU cache of materialised adapters, keyed by (memory id, content hash): a replaced memory
has a new hash, so it can never be served from a stale entry."""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

from memory_store.codebook.store import MemoryRecord
from memory_store.errors import StoreError
from memory_store.lora.weights import AdapterWeights, adapter_hash, load_adapter


class AdapterCache:
    def __init__(self, root: Path, capacity: int = 256) -> None:
        self.root = root
        self.capacity = capacity
        self._items: OrderedDict[tuple[str, str], AdapterWeights] = OrderedDict()
        self._lock = threading.Lock()

    def of(self, memory: MemoryRecord) -> AdapterWeights:
        """The weights of a stored memory."""
        return self.get(memory.id, memory.content_hash, memory.adapter_dir)

    def get(self, memory_id: str, content_hash: str, adapter_dir: str) -> AdapterWeights:
        key = (memory_id, content_hash)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        try:
            weights = load_adapter(self.root / adapter_dir)
        except Exception as exc:  # missing or corrupted files: name them, never serve junk
            raise StoreError(f"adapter of memory {memory_id} at {adapter_dir} is unreadable "
                             f"({exc}); run `loka store check`") from exc
        # a flipped bit in the weights still loads: only the content hash tells
        if adapter_hash(weights) != content_hash:
            raise StoreError(f"adapter of memory {memory_id} at {adapter_dir} does not match "
                             "its content hash (a corrupted file); run `loka store check`")
        with self._lock:
            self._items[key] = weights
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return weights

    def __len__(self) -> int:
        return len(self._items)
