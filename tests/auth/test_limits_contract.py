"""One contract, every limiter: in this process, and in Redis as one server, a Cluster and Sentinel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from rerankd.auth.keys import KeyRecord, digest_of, generate_key
from rerankd.auth.limits import KeyUsage, Limiter, MemoryLimiter, RedisLimiter
from rerankd.errors import KeyStoreUnavailable
from tests.servers import RedisServer, free_port


def key(name: str = "app", *, rpm: int | None = None, tpm: int | None = None) -> KeyRecord:
    return KeyRecord(name=name, digest=digest_of(generate_key()), created=datetime.now(UTC), rpm=rpm, tpm=tpm)


@pytest.fixture(params=["memory", "redis", "cluster", "sentinel"])
async def limiter(request: pytest.FixtureRequest) -> AsyncIterator[Limiter]:
    made: Limiter
    if request.param == "memory":
        made = MemoryLimiter()
    else:
        fixture = "clean_redis" if request.param == "redis" else request.param
        made = RedisLimiter(request.getfixturevalue(fixture).url)
    yield made
    await made.close()


async def test_without_limits_every_request_passes_and_counts(limiter: Limiter) -> None:
    k = key()
    before = datetime.now(UTC).replace(microsecond=0)
    for _ in range(50):
        assert await limiter.admit(k) == 0.0
    usage = await limiter.usage("app")
    assert usage.requests == 50
    assert usage.rate_limited == 0
    assert usage.last_used is not None
    assert usage.last_used >= before


async def test_requests_per_minute_allow_a_burst_of_rpm_then_refuse(limiter: Limiter) -> None:
    k = key(rpm=3)
    assert [await limiter.admit(k) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = await limiter.admit(k)
    # One request comes back every 60/3 = 20 s.
    assert 19.0 < wait <= 20.0
    usage = await limiter.usage("app")
    assert (usage.requests, usage.rate_limited) == (3, 1)


async def test_a_refused_key_recovers_after_the_wait(limiter: Limiter) -> None:
    k = key(rpm=60)  # refills one request per second
    admitted = 0
    while (wait := await limiter.admit(k)) == 0.0:
        admitted += 1
        assert admitted <= 70, "the limit never applied"
    assert admitted >= 60
    assert 0.0 < wait <= 1.0
    await asyncio.sleep(wait + 0.05)
    assert await limiter.admit(k) == 0.0


async def test_tokens_are_charged_after_scoring_and_may_overdraw(limiter: Limiter) -> None:
    k = key(tpm=100)
    assert await limiter.admit(k) == 0.0  # a full bucket lets a request in whatever its size
    await limiter.charge(k, tokens=150, search_units=2)
    wait = await limiter.admit(k)
    # 51 tokens short (to reach 1) at 100 tokens per 60 s.
    assert 30.0 < wait <= 30.6
    usage = await limiter.usage("app")
    assert (usage.requests, usage.tokens, usage.search_units, usage.rate_limited) == (1, 150, 2, 1)


async def test_within_the_token_budget_requests_pass(limiter: Limiter) -> None:
    k = key(rpm=100, tpm=1000)
    for _ in range(5):
        assert await limiter.admit(k) == 0.0
        await limiter.charge(k, tokens=100, search_units=1)
    usage = await limiter.usage("app")
    assert (usage.requests, usage.tokens, usage.search_units) == (5, 500, 5)


async def test_keys_are_limited_independently(limiter: Limiter) -> None:
    a, b = key("a", rpm=1), key("b", rpm=1)
    assert await limiter.admit(a) == 0.0
    assert await limiter.admit(a) > 0
    assert await limiter.admit(b) == 0.0
    assert (await limiter.usage("b")).rate_limited == 0


async def test_unknown_key_has_zero_usage(limiter: Limiter) -> None:
    assert await limiter.usage("nobody") == KeyUsage()


# -- Redis only --------------------------------------------------------------------------------


async def test_replicas_share_one_bucket(clean_redis: RedisServer) -> None:
    first, second = RedisLimiter(clean_redis.url), RedisLimiter(clean_redis.url)
    k = key(rpm=10)
    try:
        results = await asyncio.gather(*(lim.admit(k) for _ in range(10) for lim in (first, second)))
        assert sum(1 for w in results if w == 0.0) == 10
        assert (await second.usage("app")).requests == 10
    finally:
        await first.close()
        await second.close()


async def test_an_unreachable_redis_raises_unavailable_then_backs_off() -> None:
    limiter = RedisLimiter(f"redis://127.0.0.1:{free_port()}/0")
    try:
        for _ in range(limiter.shared.breaker.threshold):  # the breaker opens after these faults
            with pytest.raises(KeyStoreUnavailable, match="Redis"):
                await limiter.admit(key())
        assert limiter.shared.breaker.is_open
        with pytest.raises(KeyStoreUnavailable, match="a moment ago"):
            await limiter.charge(key(), tokens=1, search_units=1)
    finally:
        await limiter.close()


# -- token reservations ------------------------------------------------------------------------


async def test_a_reservation_holds_tokens_and_settling_gives_back_the_unused_part(limiter: Limiter) -> None:
    k = key(tpm=100)
    assert await limiter.admit(k) == 0.0
    assert await limiter.reserve(k, 60) == 0.0
    assert await limiter.reserve(k, 50) > 0  # 40 left: 50 do not fit
    await limiter.settle(k, reserved=60, tokens=20, search_units=1)
    assert await limiter.reserve(k, 75) == 0.0  # 80 left now
    wait = await limiter.reserve(k, 10)
    # 5 left, 10 needed: 5 tokens short at 100 tokens per 60 s.
    assert 2.9 < wait <= 3.0
    usage = await limiter.usage("app")
    assert (usage.tokens, usage.search_units) == (20, 1)
    # A reservation that does not fit refuses the request: it counts as rate limited, not as let through.
    assert (usage.requests, usage.rate_limited) == (-1, 2)


async def test_a_reservation_larger_than_the_bucket_passes_only_when_it_is_full(limiter: Limiter) -> None:
    k = key(tpm=100)
    assert await limiter.reserve(k, 250) == 0.0  # alone, on a full bucket
    wait = await limiter.reserve(k, 250)
    # Refused until the bucket is full again: from -150 to 100 at 100 tokens per 60 s.
    assert 149.0 < wait <= 150.0
    await limiter.settle(k, reserved=250, tokens=250, search_units=3)
    assert (await limiter.usage("app")).tokens == 250


async def test_concurrent_reservations_never_hold_more_than_the_bucket(limiter: Limiter) -> None:
    k = key(tpm=100)
    waits = await asyncio.gather(*(limiter.reserve(k, 30) for _ in range(50)))
    # 100 tokens hold three reservations of 30; the 10 left (and the little that refills while
    # these run) do not fit a fourth.
    assert sum(1 for w in waits if w == 0.0) == 3
    assert (await limiter.usage("app")).rate_limited == 47


async def test_settling_more_than_was_reserved_takes_the_difference(limiter: Limiter) -> None:
    k = key(tpm=100)
    assert await limiter.reserve(k, 10) == 0.0
    await limiter.settle(k, reserved=10, tokens=70, search_units=1)
    assert await limiter.reserve(k, 31) > 0  # 30 left
    assert await limiter.reserve(k, 29) == 0.0


async def test_keys_without_a_token_limit_reserve_nothing(limiter: Limiter) -> None:
    k = key(rpm=10)
    assert await limiter.reserve(k, 10**9) == 0.0
    await limiter.settle(k, reserved=0, tokens=5, search_units=1)
    assert (await limiter.usage("app")).tokens == 5


async def test_usage_is_split_by_day_and_model(limiter: Limiter) -> None:
    k = key("split")
    assert await limiter.usage_split("split") == []  # usage from before the split: none recorded
    await limiter.charge(k, tokens=100, search_units=1, model="small")
    await limiter.charge(k, tokens=30, search_units=1, model="small")
    await limiter.charge(k, tokens=7, search_units=2, model="large")
    await limiter.charge(k, tokens=0, search_units=0)  # scored nothing: no model, not in the split
    await limiter.charge(key("other"), tokens=5, search_units=1, model="small")
    rows = await limiter.usage_split("split")
    today = datetime.now(UTC).date()
    assert [(r.day, r.model, r.requests, r.search_units, r.tokens) for r in rows] == [
        (today, "large", 1, 2, 7),
        (today, "small", 2, 2, 130),
    ]
    total = await limiter.usage("split")
    assert (total.tokens, total.search_units) == (137, 4)
