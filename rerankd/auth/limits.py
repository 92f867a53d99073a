"""Per-key rate limits and usage counters: in Redis (shared by replicas) or in this process.

Each limit is a token bucket that holds one minute's allowance and refills continuously: ``rpm``
requests, ``tpm`` scored input tokens.

- requests: :meth:`Limiter.admit` takes one request from the bucket, or refuses with the wait until
  one is there (it also refuses while the token bucket is empty);
- tokens: a scoring request's tokens are known only after scoring, so :meth:`Limiter.reserve` takes
  a safe upper estimate from the token bucket before scoring, or refuses with the wait until it
  fits; :meth:`Limiter.settle` then gives back what the request did not use. A reservation larger
  than the whole bucket is let through only when the bucket is full, so a request bigger than
  ``tpm`` still runs, alone. Reservations never overlap beyond the bucket: however many requests
  run at once, a key scores at most ``tpm`` plus one request's tokens, plus what refills meanwhile.

In Redis, admit, reserve and settle are Lua scripts: each runs atomically on the server and reads
Redis' own clock, so replicas share one bucket per key and their clocks do not matter. Litestar's
rate-limit middleware counts requests per client in fixed windows, with one limit for all; it has
no per-key limits and nothing for a cost known only after the response, hence the scripts.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import msgspec
from redis.exceptions import NoScriptError

from rerankd.auth.keys import KeyRecord
from rerankd.auth.store import auth_prefix, connect_redis
from rerankd.errors import KeyStoreUnavailable
from rerankd.redisconn import DEFAULT_PREFIX, FAULTS, SharedRedis

__all__ = ["KeyUsage", "Limiter", "MemoryLimiter", "ModelDayUsage", "RedisLimiter"]


class KeyUsage(msgspec.Struct, kw_only=True):
    #: Requests let through the limits (any guarded route, any outcome).
    requests: int = 0
    #: Cohere search units and model input tokens of scored requests.
    search_units: int = 0
    tokens: int = 0
    #: Requests refused with 429.
    rate_limited: int = 0
    last_used: datetime | None = None


class ModelDayUsage(msgspec.Struct, kw_only=True, frozen=True):
    """What a key's scored requests used of one model on one day (UTC)."""

    day: date
    model: str
    requests: int = 0
    search_units: int = 0
    tokens: int = 0


class Limiter(ABC):
    """Backend failures raise :class:`KeyStoreUnavailable`; the caller decides how to degrade."""

    @abstractmethod
    async def admit(self, key: KeyRecord) -> float:
        """0.0 when the request may go ahead (and is counted); else seconds to wait before a retry."""

    @abstractmethod
    async def reserve(self, key: KeyRecord, tokens: int) -> float:
        """Hold ``tokens`` on the key's token bucket: 0.0 when they fit (or the bucket is full);
        else the seconds until they would, and the request counts as refused, not let through."""

    @abstractmethod
    async def settle(
        self, key: KeyRecord, *, reserved: int, tokens: int, search_units: int, model: str = ""
    ) -> None:
        """Replace a reservation by what the request scored: the difference goes back to the
        bucket (or is taken from it), and the scored tokens and units count as usage."""

    async def charge(self, key: KeyRecord, *, tokens: int, search_units: int, model: str = "") -> None:
        """Record a scored request's tokens, with nothing reserved for them."""
        await self.settle(key, reserved=0, tokens=tokens, search_units=search_units, model=model)

    @abstractmethod
    async def usage(self, name: str) -> KeyUsage: ...

    @abstractmethod
    async def usage_split(self, name: str) -> list[ModelDayUsage]:
        """Scored requests, units and tokens by day and model, oldest day first. Counted since
        this split was introduced: totals from before it show in :meth:`usage` only."""

    async def close(self) -> None:
        return None


# -- in this process ---------------------------------------------------------------------------


class _Bucket:
    __slots__ = ("level", "stamp")

    def __init__(self, level: float, stamp: float) -> None:
        self.level = level
        self.stamp = stamp

    def refill(self, capacity: int, now: float) -> float:
        self.level = min(float(capacity), self.level + (now - self.stamp) * capacity / 60.0)
        self.stamp = now
        return self.level


def _wait(level: float, capacity: int) -> float:
    """Seconds until a bucket of this capacity holds one unit again (0 if it does)."""
    return 0.0 if level >= 1.0 else (1.0 - level) * 60.0 / capacity


class MemoryLimiter(Limiter):
    """Limits and usage for one process: a single replica without Redis. Lost on restart."""

    def __init__(self) -> None:
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._usage: dict[str, KeyUsage] = {}
        self._split: dict[tuple[str, date, str], list[int]] = {}

    def _bucket(self, name: str, kind: str, capacity: int, now: float) -> _Bucket:
        bucket = self._buckets.setdefault((name, kind), _Bucket(float(capacity), now))
        bucket.refill(capacity, now)
        return bucket

    async def admit(self, key: KeyRecord) -> float:
        now = time.monotonic()
        usage = self._usage.setdefault(key.name, KeyUsage())
        rpm = self._bucket(key.name, "rpm", key.rpm, now) if key.rpm else None
        tpm = self._bucket(key.name, "tpm", key.tpm, now) if key.tpm else None
        wait = max(
            _wait(rpm.level, key.rpm) if rpm and key.rpm else 0.0,
            _wait(tpm.level, key.tpm) if tpm and key.tpm else 0.0,
        )
        if wait > 0:
            usage.rate_limited += 1
            return wait
        if rpm is not None:
            rpm.level -= 1.0
        usage.requests += 1
        usage.last_used = datetime.now(UTC)
        return 0.0

    async def reserve(self, key: KeyRecord, tokens: int) -> float:
        if not key.tpm:
            return 0.0
        bucket = self._bucket(key.name, "tpm", key.tpm, time.monotonic())
        if bucket.level >= tokens or bucket.level >= key.tpm:  # no await in between: atomic here
            bucket.level -= tokens
            return 0.0
        usage = self._usage.setdefault(key.name, KeyUsage())
        usage.requests -= 1  # counted when admitted; refused after all
        usage.rate_limited += 1
        return (min(tokens, key.tpm) - bucket.level) * 60.0 / key.tpm

    async def settle(
        self, key: KeyRecord, *, reserved: int, tokens: int, search_units: int, model: str = ""
    ) -> None:
        if key.tpm:
            bucket = self._bucket(key.name, "tpm", key.tpm, time.monotonic())
            bucket.level = min(float(key.tpm), bucket.level + reserved - tokens)
        usage = self._usage.setdefault(key.name, KeyUsage())
        usage.tokens += tokens
        usage.search_units += search_units
        if model:
            counts = self._split.setdefault((key.name, datetime.now(UTC).date(), model), [0, 0, 0])
            counts[0] += 1
            counts[1] += search_units
            counts[2] += tokens

    async def usage(self, name: str) -> KeyUsage:
        return msgspec.structs.replace(self._usage.get(name, KeyUsage()))

    async def usage_split(self, name: str) -> list[ModelDayUsage]:
        rows = [
            ModelDayUsage(day=day, model=model, requests=c[0], search_units=c[1], tokens=c[2])
            for (key, day, model), c in self._split.items()
            if key == name
        ]
        return sorted(rows, key=lambda r: (r.day, r.model))


# -- Redis -------------------------------------------------------------------------------------

# Shared by both scripts: Redis' clock in seconds, and a bucket's level refilled to now.
# A bucket is a hash {l: level, t: time}; a missing one is full, so it may expire once refilled.
_LUA_COMMON = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local function level(key, cap)
  local v = redis.call('HMGET', key, 'l', 't')
  if not v[1] then return cap end
  return math.min(cap, tonumber(v[1]) + (now - tonumber(v[2])) * cap / 60)
end
local function store(key, l, cap)
  redis.call('HSET', key, 'l', tostring(l), 't', tostring(now))
  redis.call('PEXPIRE', key, math.ceil((cap - l) * 60000 / cap) + 1000)
end
"""

# KEYS: rpm bucket, tpm bucket, usage. ARGV: rpm, tpm (0: no limit). Returns the wait in seconds
# as a string (a Lua number would come back truncated to an integer); "0" when admitted.
_ADMIT = (
    _LUA_COMMON
    + """
local rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2])
local wait, lr = 0, 0
if rpm > 0 then
  lr = level(KEYS[1], rpm)
  if lr < 1 then wait = (1 - lr) * 60 / rpm end
end
if tpm > 0 then
  local lt = level(KEYS[2], tpm)
  if lt < 1 then wait = math.max(wait, (1 - lt) * 60 / tpm) end
end
if wait > 0 then
  redis.call('HINCRBY', KEYS[3], 'rate_limited', 1)
  return tostring(wait)
end
if rpm > 0 then store(KEYS[1], lr - 1, rpm) end
redis.call('HINCRBY', KEYS[3], 'requests', 1)
redis.call('HSET', KEYS[3], 'last_used', tostring(now))
return '0'
"""
)

# KEYS: tpm bucket, usage. ARGV: tpm (> 0), tokens. Returns the wait as a string; "0" when held.
_RESERVE = (
    _LUA_COMMON
    + """
local tpm, need = tonumber(ARGV[1]), tonumber(ARGV[2])
local l = level(KEYS[1], tpm)
if l >= need or l >= tpm then
  store(KEYS[1], l - need, tpm)
  return '0'
end
redis.call('HINCRBY', KEYS[2], 'requests', -1)
redis.call('HINCRBY', KEYS[2], 'rate_limited', 1)
return tostring((math.min(need, tpm) - l) * 60 / tpm)
"""
)

# KEYS: tpm bucket, usage, usage split. ARGV: tpm (0: no limit), reserved, tokens, search units,
# model ("": a request that scored nothing). The split hash has one field per day (days since the
# epoch by Redis' clock, UTC), model and count: "19693<TAB>model<TAB>tokens" (names hold no tabs).
_SETTLE = (
    _LUA_COMMON
    + """
local tpm, reserved, tokens = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if tpm > 0 then store(KEYS[1], math.min(tpm, level(KEYS[1], tpm) + reserved - tokens), tpm) end
redis.call('HINCRBY', KEYS[2], 'tokens', tokens)
redis.call('HINCRBY', KEYS[2], 'search_units', tonumber(ARGV[4]))
if ARGV[5] ~= '' then
  local field = tostring(math.floor(now / 86400)) .. '\t' .. ARGV[5] .. '\t'
  redis.call('HINCRBY', KEYS[3], field .. 'requests', 1)
  redis.call('HINCRBY', KEYS[3], field .. 'search_units', tonumber(ARGV[4]))
  redis.call('HINCRBY', KEYS[3], field .. 'tokens', tokens)
end
return 0
"""
)


def _keys(prefix: str, name: str) -> tuple[str, str, str]:
    # The {name} hash tag keeps one key's three entries in one Redis Cluster slot, as scripts need.
    base = f"{prefix}{{{name}}}"
    return f"{base}:rpm", f"{base}:tpm", f"{base}:usage"


def _split_key(prefix: str, name: str) -> str:
    return f"{prefix}{{{name}}}:usage:split"


class _Script:
    """A Lua script run by its digest; where a server does not know it yet (first use, a restart,
    a failover), by its text, which caches it there. Not redis-py's ``Script``: on a miss that
    loads it on every primary of a cluster, and many requests doing so at once broke their
    connections."""

    def __init__(self, redis: SharedRedis, source: str) -> None:
        self._redis = redis
        self._source = source
        self._sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, *, keys: Sequence[str], args: Sequence[int | str]) -> Any:
        client = self._redis.client
        try:
            return await client.evalsha(self._sha, len(keys), *keys, *args)
        except NoScriptError:
            return await client.eval(self._source, len(keys), *keys, *args)


class RedisLimiter(Limiter):
    """Limits and usage shared by every replica that uses this Redis.

    Calls go through the Redis breaker (shared with the cache): while it is open they are refused
    at once, so a dead Redis costs requests nothing but a log line."""

    #: Budget of one call; limits sit on the request path.
    TIMEOUT_S = 1.0

    def __init__(self, redis: SharedRedis | str, *, prefix: str = DEFAULT_PREFIX) -> None:
        self.shared, self._own = connect_redis(redis, prefix)
        self.redis = self.shared.client
        self._prefix = auth_prefix(self.shared.prefix)
        self._admit = _Script(self.shared, _ADMIT)
        self._reserve = _Script(self.shared, _RESERVE)
        self._settle = _Script(self.shared, _SETTLE)

    def _keys(self, name: str) -> tuple[str, str, str]:
        return _keys(self._prefix, name)

    async def _run(self, what: str, call: Callable[[], Awaitable[Any]]) -> Any:
        breaker = self.shared.breaker
        if not breaker.allow():
            raise KeyStoreUnavailable(f"cannot {what}: Redis did not answer a moment ago")
        try:
            async with asyncio.timeout(self.TIMEOUT_S):
                if self.shared.cold:
                    await self.shared.warm_up()
                result = await call()
        except FAULTS as exc:
            breaker.failure(exc)
            raise KeyStoreUnavailable(f"cannot {what}: Redis: {exc or 'no answer in time'}") from exc
        except BaseException:
            breaker.abandon()
            raise
        breaker.success()
        return result

    async def admit(self, key: KeyRecord) -> float:
        args = [key.rpm or 0, key.tpm or 0]
        keys = list(self._keys(key.name))
        wait = await self._run("check limits", lambda: self._admit(keys=keys, args=args))
        return float(wait)

    async def reserve(self, key: KeyRecord, tokens: int) -> float:
        if not key.tpm:
            return 0.0
        _, tpm, usage = self._keys(key.name)
        args = [key.tpm, tokens]
        wait = await self._run("check limits", lambda: self._reserve(keys=[tpm, usage], args=args))
        return float(wait)

    async def settle(
        self, key: KeyRecord, *, reserved: int, tokens: int, search_units: int, model: str = ""
    ) -> None:
        _, tpm, usage = self._keys(key.name)
        args: list[int | str] = [key.tpm or 0, reserved, tokens, search_units, model]
        keys = [tpm, usage, _split_key(self._prefix, key.name)]
        await self._run("record usage", lambda: self._settle(keys=keys, args=args))

    async def usage(self, name: str) -> KeyUsage:
        usage_key = self._keys(name)[2]
        raw: dict[bytes, bytes] = await self._run("read usage", lambda: self.redis.hgetall(usage_key))
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        last = fields.pop("last_used", None)
        counts = {k: int(v) for k, v in fields.items() if k in KeyUsage.__struct_fields__}
        when = datetime.fromtimestamp(float(last), UTC) if last else None
        return KeyUsage(**counts, last_used=when)

    async def usage_split(self, name: str) -> list[ModelDayUsage]:
        raw: dict[bytes, bytes] = await self._run(
            "read usage", lambda: self.redis.hgetall(_split_key(self._prefix, name))
        )
        counts: dict[tuple[int, str], dict[str, int]] = {}
        for field, value in raw.items():
            day, model, what = field.decode().split("\t")
            counts.setdefault((int(day), model), {})[what] = int(value)
        epoch = date(1970, 1, 1)
        return [
            ModelDayUsage(day=epoch + timedelta(days=day), model=model, **c)
            for (day, model), c in sorted(counts.items())
        ]

    async def close(self) -> None:
        if self._own:
            await self.shared.close()
