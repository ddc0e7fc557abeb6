"""In-memory implementations of the product's ports, for tests, benchmarks and simulations."""

from catalens_tools.in_memory.blobs import MemoryBlobStore
from catalens_tools.in_memory.profiles import InMemoryProfileStore

__all__ = ["InMemoryProfileStore", "MemoryBlobStore"]
