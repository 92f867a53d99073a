"""The shared store: Redis through ``redis.asyncio`` (hiredis parser), guarded by a time budget
and a circuit breaker so that a slow or dead Redis costs requests at most one budget, then nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, cast
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from rerankd.cache.base import CacheStore

__all__ = ["Breaker", "RedisStore", "describe_url"]

log = logging.getLogger(__name__)

#: Keys per MGET: one command stays small enough not to stall Redis for other clients.
MGET_CHUNK = 1000
# What a fault looks like: the client's own errors, socket errors, and our time budget running out.
_FAULTS = (RedisError, OSError, TimeoutError)


def describe_url(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix://{parts.path}"
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class Breaker:
    """Closed → open after ``threshold`` consecutive faults; while open, calls are skipped until
    the back-off passes; then one call probes (half-open). A good probe closes the breaker, a bad
    one reopens it with twice the back-off. State changes are logged once each."""

    def __init__(
        self,
        name: str,
        *,
        threshold: int = 3,
        backoff_s: float = 0.5,
        max_backoff_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.threshold = threshold
        self.initial_backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._clock = clock
        self._consecutive = 0
        self._backoff_s = backoff_s
        self._retry_at: float | None = None  # set while open
        self._probing = False
        self._faults_while_open = 0
        self.opened = 0

    @property
    def is_open(self) -> bool:
        return self._retry_at is not None

    def allow(self) -> bool:
        """May a call go to the backend now? While open, only the one probe may."""
        if self._retry_at is None:
            return True
        if self._probing or self._clock() < self._retry_at:
            return False
        self._probing = True
        return True

    def success(self) -> None:
        self._consecutive = 0
        if self._retry_at is not None:
            log.warning("%s is reachable again; cache resumed", self.name)
            self._retry_at = None
            self._probing = False
            self._backoff_s = self.initial_backoff_s

    def abandon(self) -> None:
        """A call ended without a verdict (cancelled): let the next call probe instead."""
        self._probing = False

    def failure(self, exc: BaseException) -> None:
        self._consecutive += 1
        if self._retry_at is not None:
            if self._probing:  # the probe failed: wait longer before the next one
                self._probing = False
                self._backoff_s = min(self._backoff_s * 2, self.max_backoff_s)
                self._retry_at = self._clock() + self._backoff_s
                log.debug(
                    "%s still unreachable (%s); next try in %.1f s", self.name, _why(exc), self._backoff_s
                )
            return
        if self._consecutive >= self.threshold:
            self.trip(exc)

    def trip(self, exc: BaseException) -> None:
        """Open now (e.g. the backend is down at start-up)."""
        self.opened += 1
        self._probing = False
        self._retry_at = self._clock() + self._backoff_s
        log.warning(
            "%s is unavailable (%s); serving uncached, next try in %.1f s",
            self.name,
            _why(exc),
            self._backoff_s,
        )


def _pack_mget(keys: Sequence[bytes]) -> bytes:
    """``MGET key...`` in RESP."""
    head = b"*%d\r\n$4\r\nMGET\r\n" % (len(keys) + 1)
    size = len(keys[0]) if keys else 0
    if keys and min(map(len, keys)) == max(map(len, keys)):
        # Our keys all have one length: one join, no step per key in Python.
        return b"%b$%d\r\n%b\r\n" % (head, size, (b"\r\n$%d\r\n" % size).join(keys))
    return head + b"".join([b"$%d\r\n%b\r\n" % (len(k), k) for k in keys])


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError) and not str(exc):
        return "no answer within the time budget"
    return f"{type(exc).__name__}: {exc}"


class RedisStore(CacheStore):
    """``redis://``, ``rediss://`` (TLS) or ``unix://`` URLs; user and password in the URL.

    Each call runs under a time budget (``timeout_s`` for reads, which sit on the request path;
    ``write_timeout_s`` for writes, which do not). redis-py's own retries are off: the breaker
    decides when to try again. Connections reconnect by themselves on the next call.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 0.05,
        write_timeout_s: float | None = None,
        breaker: Breaker | None = None,
        **client_kwargs: Any,
    ) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.write_timeout_s = write_timeout_s or max(10 * timeout_s, 0.5)
        self.breaker = breaker or Breaker(f"redis cache at {describe_url(url)}")
        options: dict[str, Any] = {
            "socket_connect_timeout": 5.0,
            "socket_timeout": 5.0,
            "retry": Retry(NoBackoff(), 0),
            "client_name": "rerankd",
            **client_kwargs,
        }
        # Raises ValueError for an unknown scheme or option: a configuration error at start-up.
        self._client: aioredis.Redis = aioredis.Redis.from_url(url, **options)
        self._counts = dict.fromkeys(
            ("reads", "hits", "misses", "writes", "faults", "timeouts", "skipped", "garbage"), 0
        )

    async def open(self) -> None:
        """Say early in the log whether Redis answers; never fail start-up over it."""
        try:
            async with asyncio.timeout(max(self.timeout_s, 1.0)):
                await self._client.ping()
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
        if len(keys) <= MGET_CHUNK:
            return await self._mget_one(keys)
        # Several MGETs in one round trip.
        pipe = self._client.pipeline(transaction=False)
        for start in range(0, len(keys), MGET_CHUNK):
            pipe.mget(keys[start : start + MGET_CHUNK])
        chunks = await pipe.execute()
        return [v for chunk in chunks for v in chunk]

    async def _mget_one(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """One MGET on a pooled connection, packed here. The read is a large part of a fully cached
        request's work; this path costs half the CPU of ``Redis.mget`` (no generic argument
        encoding, retry wrapper or per-command metrics). The connection still does the handshake
        (AUTH, SELECT, TLS), and drops itself on any error or cancellation mid-reply."""
        pool = self._client.connection_pool
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
        await self._client.aclose()

    def stats(self) -> dict[str, int]:
        return {
            **self._counts,
            "breaker_opened": self.breaker.opened,
            "breaker_open": int(self.breaker.is_open),
        }
