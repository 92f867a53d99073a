"""The per-pair result cache: stores (memory, Redis), key and value formats, coalescing and
write-behind. Nothing here knows about HTTP or about models."""

from __future__ import annotations

from rerankd.cache.base import CacheStore
from rerankd.cache.coalesce import Coalescer, Superseded
from rerankd.cache.keys import (
    PairScore,
    decode_all,
    decode_value,
    decode_values,
    encode_value,
    pair_keys,
)
from rerankd.cache.memory import MemoryStore
from rerankd.cache.writer import WriteBehind

__all__ = [
    "CacheStore",
    "Coalescer",
    "MemoryStore",
    "PairScore",
    "Superseded",
    "WriteBehind",
    "build_store",
    "decode_all",
    "decode_value",
    "decode_values",
    "encode_value",
    "pair_keys",
]


def build_store(redis_url: str | None, *, timeout_s: float, max_entries: int, max_bytes: int) -> CacheStore:
    """Redis when a URL is given, else the process-local LRU."""
    if redis_url is None:
        return MemoryStore(max_entries=max_entries, max_bytes=max_bytes)
    # Imported here: processes without Redis never load the client.
    from rerankd.cache.redis import RedisStore

    return RedisStore(redis_url, timeout_s=timeout_s)
