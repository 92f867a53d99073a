from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from rerankd.cache import CacheStore, MemoryStore
from rerankd.cache.redis import RedisStore
from tests.servers import RedisCluster, RedisSentinel, RedisServer


@pytest_asyncio.fixture(params=["memory", "redis", "cluster", "sentinel"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[CacheStore]:
    """Every backend, for the contract suite: the in-process LRU, a real private Redis, a 3-node
    Redis Cluster and a Sentinel-managed master."""
    backend: CacheStore
    if request.param == "memory":
        backend = MemoryStore(max_entries=100_000, max_bytes=100_000_000)
    elif request.param in ("cluster", "sentinel"):
        deployment: RedisCluster | RedisSentinel = request.getfixturevalue(request.param)
        backend = RedisStore(deployment.url, timeout_s=2.0)
    else:
        redis: RedisServer = request.getfixturevalue("redis")
        # A generous budget: the contract is about results, not about a loaded test machine.
        backend = RedisStore(redis.url, timeout_s=2.0)
    async with backend:
        yield backend
