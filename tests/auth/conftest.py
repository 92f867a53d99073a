from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tests.servers import RedisServer, redis_server


@pytest.fixture(scope="module")
def module_redis() -> Iterator[RedisServer]:
    """One private Redis for a test module; ``clean_redis`` empties it for each test."""
    with redis_server() as server:
        yield server


@pytest.fixture
def clean_redis(module_redis: RedisServer) -> RedisServer:
    with redis.Redis.from_url(module_redis.url) as client:
        client.flushall()
    return module_redis
