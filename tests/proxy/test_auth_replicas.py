"""Two ``rerankd serve`` replicas sharing one private Redis: one set of keys, one bucket per key."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import msgspec
import pytest

from tests.proxy.auth_helpers import assert_error_body, call, eventually, keys_cli, new_key
from tests.servers import RedisServer, redis_server, rerankd_server

RPM = 120


@dataclass
class Replicas:
    a: httpx.Client
    b: httpx.Client
    redis: RedisServer
    limited: str
    metered: str

    @property
    def store(self) -> tuple[str, str]:
        return ("--redis-url", self.redis.url)


@pytest.fixture(scope="module")
def replicas() -> Iterator[Replicas]:
    with redis_server() as redis:
        store = ("--redis-url", redis.url)
        limited = new_key("limited", *store, limits=("--rpm", str(RPM)))
        metered = new_key("metered", *store)
        with (
            rerankd_server(list(store)) as first,
            rerankd_server(list(store)) as second,
            httpx.Client(base_url=first.url, timeout=60) as a,
            httpx.Client(base_url=second.url, timeout=60) as b,
        ):
            yield Replicas(a, b, redis, limited, metered)


def test_a_rate_limit_holds_across_replicas(replicas: Replicas) -> None:
    admitted = 0
    for i in range(4 * RPM):
        r = call(replicas.a if i % 2 == 0 else replicas.b, "GET", "/v1/models", replicas.limited)
        if r.status_code != 200:
            break
        admitted += 1
    assert_error_body(r, 429)
    # One bucket of RPM, refilling 2 per second while the loop runs; two separate buckets would
    # have let about 2 * RPM through.
    assert RPM <= admitted < RPM * 3 // 2
    # The other replica refuses too: the bucket is empty for both.
    other = replicas.b if admitted % 2 == 0 else replicas.a
    assert_error_body(call(other, "GET", "/v1/models", replicas.limited), 429)
    usage = msgspec.json.decode(keys_cli("usage", "limited", "--json", *replicas.store).stdout)
    assert usage["requests"] == admitted
    assert usage["rate_limited"] == 2


def test_usage_adds_up_over_replicas(replicas: Replicas) -> None:
    tokens = sum(
        call(c, "POST", "/v2/rerank", replicas.metered).json()["meta"]["tokens"]["input_tokens"]
        for c in (replicas.a, replicas.b, replicas.b)
    )
    usage = msgspec.json.decode(keys_cli("usage", "metered", "--json", *replicas.store).stdout)
    assert (usage["requests"], usage["tokens"], usage["search_units"]) == (3, tokens, 3)


def test_a_revoked_key_stops_on_every_replica(replicas: Replicas) -> None:
    key = new_key("short-lived", *replicas.store)

    def answers(client: httpx.Client, status: int) -> Callable[[], bool]:
        return lambda: call(client, "GET", "/v1/models", key).status_code == status

    for c in (replicas.a, replicas.b):
        eventually(answers(c, 200), 10, "the key works")
    keys_cli("revoke", "short-lived", *replicas.store)
    for c in (replicas.a, replicas.b):
        eventually(answers(c, 401), 10, "the revoked key fails")
