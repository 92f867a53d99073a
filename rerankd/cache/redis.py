"""The shared store: Redis through ``redis.asyncio`` (hiredis parser), guarded by a time budget
and the Redis breaker so that a slow or dead Redis costs requests at most one budget, then nothing.

One server and Sentinel's master take one MGET per request, packed here. A cluster takes one MGET
per hash slot, pipelined to the nodes that own them: pair keys carry a hash tag per (context,
query) (``rerankd.cache.keys``), so a request's keys share a slot and it is one MGET there too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import cast

from redis.asyncio import Redis
from redis.exceptions import RedisError

from rerankd.breaker import Breaker
from rerankd.cache.base import CacheStore
from rerankd.redisconn import FAULTS, SharedRedis, describe_url

__all__ = ["Breaker", "RedisStore", "describe_url"]

log = logging.getLogger(__name__)

#: Keys per MGET: one command stays small enough not to stall Redis for other clients.
MGET_CHUNK = 1000
_FAULTS = FAULTS


def _pack_mget(keys: Sequence[bytes]) -> bytes:
    """``MGET key...`` in RESP."""
    head = b"*%d\r\n$4\r\nMGET\r\n" % (len(keys) + 1)
    size = len(keys[0]) if keys else 0
    if keys and min(map(len, keys)) == max(map(len, keys)):
        # Our keys all have one length: one join, no step per key in Python.
        return b"%b$%d\r\n%b\r\n" % (head, size, (b"\r\n$%d\r\n" % size).join(keys))
    return head + b"".join([b"$%d\r\n%b\r\n" % (len(k), k) for k in keys])


class RedisStore(CacheStore):
    """A :class:`SharedRedis` (or a URL, for a store of its own: see ``rerankd.redisconn``).

    Each call runs under a time budget (``timeout_s`` for reads, which sit on the request path;
    ``write_timeout_s`` for writes, which do not). The breaker is the Redis connection's, shared
    with the key store and the limits: one outage, noticed once.
    """

    def __init__(
        self,
        redis: SharedRedis | str,
        *,
        timeout_s: float = 0.05,
        write_timeout_s: float | None = None,
        breaker: Breaker | None = None,
    ) -> None:
        self._own = isinstance(redis, str)
        if isinstance(redis, str):
            # Raises ValueError for an unknown scheme or option: a configuration error at start-up.
            redis = SharedRedis(redis, breaker=breaker or Breaker(f"redis cache at {describe_url(redis)}"))
        self.redis = redis
        self.url = redis.target.url
        self.timeout_s = timeout_s
        self.write_timeout_s = write_timeout_s or max(10 * timeout_s, 0.5)
        self.breaker = redis.breaker
        self._client = redis.client
        self._counts = dict.fromkeys(
            ("reads", "hits", "misses", "writes", "faults", "timeouts", "skipped", "garbage"), 0
        )

    async def open(self) -> None:
        """Say early in the log whether Redis answers; never fail start-up over it."""
        try:
            await self.redis.ping(max(self.timeout_s, 1.0))
        except _FAULTS as exc:
            self._fault(exc)
            if not self.breaker.is_open:
                self.breaker.trip(exc)
        else:
            log.info("%s answers; results are cached for sharing", self.breaker.name)

    async def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        if not keys:
            return []
        if not self.breaker.allow():
            self._counts["skipped"] += 1
            return [None] * len(keys)
        try:
            async with asyncio.timeout(self.timeout_s):
                if self.redis.cold:
                    await self.redis.warm_up()
                values = await self._mget(keys)
        except _FAULTS as exc:
            self._fault(exc)
            return [None] * len(keys)
        except BaseException:  # cancelled: a probe that never finished must not keep the breaker shut
            self.breaker.abandon()
            raise
        if not isinstance(values, list) or len(values) != len(keys):  # a proxy or another server
            self._counts["garbage"] += 1
            self._fault(RedisError(f"MGET of {len(keys)} keys answered {type(values).__name__}"))
            return [None] * len(keys)
        self.breaker.success()
        hits = len(values) - values.count(None)
        c = self._counts
        c["reads"] += 1
        c["hits"] += hits
        c["misses"] += len(keys) - hits
        return values

    async def _mget(self, keys: Sequence[bytes]) -> list[bytes | None]:
        client = self._client
        if not isinstance(client, Redis):
            # Redis Cluster: one MGET per slot, pipelined per node; redis-py follows MOVED (and
            # refreshes its slot map) and ASK within the call, under our time budget.
            chunks = [keys[i : i + MGET_CHUNK] for i in range(0, len(keys), MGET_CHUNK)]
            got = await asyncio.gather(*(client.mget_nonatomic(chunk) for chunk in chunks))
            return [v for chunk in got for v in chunk]
        if len(keys) <= MGET_CHUNK:
            return await self._mget_one(client, keys)
        # Several MGETs in one round trip.
        pipe = client.pipeline(transaction=False)
        for start in range(0, len(keys), MGET_CHUNK):
            pipe.mget(keys[start : start + MGET_CHUNK])
        chunks = await pipe.execute()
        return [v for chunk in chunks for v in chunk]

    async def _mget_one(self, client: Redis, keys: Sequence[bytes]) -> list[bytes | None]:
        """One MGET on a pooled connection, packed here. The read is a large part of a fully cached
        request's work; this path costs half the CPU of ``Redis.mget`` (no generic argument
        encoding, retry wrapper or per-command metrics). The connection still does the handshake
        (AUTH, SELECT, TLS), and drops itself on any error or cancellation mid-reply."""
        pool = client.connection_pool
        conn = await pool.get_connection()  # type: ignore[no-untyped-call]  # unannotated in redis-py
        try:
            await conn.send_packed_command(_pack_mget(keys))
            # decode_responses is off: values are bytes (or None).
            return cast(list[bytes | None], await conn.read_response())
        finally:
            await pool.release(conn)

    async def set_many(self, items: Sequence[tuple[bytes, bytes]], ttl_s: int) -> None:
        if not items:
            return
        if not self.breaker.allow():
            self._counts["skipped"] += 1
            return
        try:
            async with asyncio.timeout(self.write_timeout_s):
                if self.redis.cold:
                    await self.redis.warm_up()
                pipe = self._client.pipeline(transaction=False)
                for key, value in items:
                    pipe.set(key, value, ex=ttl_s)
                await pipe.execute()
        except _FAULTS as exc:
            self._fault(exc)
            return
        except BaseException:
            self.breaker.abandon()
            raise
        self.breaker.success()
        self._counts["writes"] += len(items)

    def _fault(self, exc: BaseException) -> None:
        self._counts["faults"] += 1
        if isinstance(exc, TimeoutError):
            self._counts["timeouts"] += 1
        self.breaker.failure(exc)

    async def close(self) -> None:
        if self._own:
            await self.redis.close()

    def stats(self) -> dict[str, int]:
        return {
            **self._counts,
            "breaker_opened": self.breaker.opened,
            "breaker_open": int(self.breaker.is_open),
        }
