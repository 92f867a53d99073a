"""The per-pair result cache: stores (memory, Redis), key and value formats, coalescing and
write-behind. Nothing here knows about HTTP or about models."""

from __future__ import annotations

from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from rerankd.redisconn import SharedRedis

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


def build_store(
    redis: SharedRedis | None, *, timeout_s: float, max_entries: int, max_bytes: int
) -> CacheStore:
    """Redis when one is given, else the process-local LRU."""
    if redis is None:
        return MemoryStore(max_entries=max_entries, max_bytes=max_bytes)
    # Imported here: processes without Redis never load the store's code.
    from rerankd.cache.redis import RedisStore

    return RedisStore(redis, timeout_s=timeout_s)
