"""Key-value backends shared by the caches and the online feature store (imports nothing above it)."""

from mlscale.storage.base import KeyValue
from mlscale.storage.memory import MemoryKeyValue

__all__ = ["KeyValue", "MemoryKeyValue"]
