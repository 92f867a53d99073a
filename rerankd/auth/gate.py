"""The server side of API keys: who may call guarded routes, within which limits.

The gate keeps every key record in memory, indexed by digest, and polls the store for changes, so a
request costs no store round trip and a created or revoked key takes effect within ``POLL_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Hashable
from datetime import UTC, datetime

from rerankd.auth.keys import KeyRecord, digest_of
from rerankd.auth.limits import Limiter, MemoryLimiter, RedisLimiter
from rerankd.auth.store import FileKeyStore, KeyStore, RedisKeyStore, StaticKeyStore
from rerankd.config import Settings
from rerankd.errors import ConfigError, KeyStoreUnavailable, RateLimited, Unauthorized
from rerankd.redisconn import SharedRedis

__all__ = ["Gate", "build_gate", "check_exposure", "is_loopback", "open_store"]

log = logging.getLogger(__name__)

_UNSET: Hashable = object()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # another host name may resolve to anything: treat it as exposed


class Gate:
    """Authenticates keys, applies their limits, records their usage."""

    POLL_S = 2.0

    def __init__(
        self,
        *,
        mode: str = "auto",
        loopback: bool = True,
        store: KeyStore | None = None,
        limiter: Limiter | None = None,
        on_close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.mode = mode
        self.loopback = loopback
        self.store = store
        self.limiter = limiter or MemoryLimiter()
        self._on_close = on_close
        self._by_digest: dict[str, KeyRecord] = {}
        self._version: Hashable = _UNSET
        self._task: asyncio.Task[None] | None = None
        self._store_down = False
        self._limiter_down = False

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self.mode == "off" or self.store is None:
            log.info("API keys are off (%s)", "auth off" if self.mode == "off" else "no key store configured")
            return
        await self._poll()
        self._task = asyncio.create_task(self._watch(), name="rerankd-keys-watch")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.store is not None:
            await self.store.close()
        await self.limiter.close()
        if self._on_close is not None:
            await self._on_close()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.POLL_S)
            await self._poll()

    async def reload(self) -> bool:
        """Read the records again if the store changed; True if it did. Raises if unreachable."""
        assert self.store is not None
        version = await self.store.version()
        if version == self._version:
            return False
        # The version is read first: a change landing in between shows up at the next poll.
        records = await self.store.records()
        self._by_digest = {r.digest: r for r in records}
        self._version = version
        log.info("loaded %d API key record(s) from %s", len(records), self.store.description)
        return True

    async def _poll(self) -> None:
        try:
            await self.reload()
        except KeyStoreUnavailable as exc:
            if not self._store_down:  # once per outage, not every poll
                log.warning("%s; keeping the keys last loaded", exc.detail)
            self._store_down = True
        else:
            if self._store_down:
                log.info("the key store answers again")
            self._store_down = False

    # -- requests ----------------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self._version is not _UNSET

    @property
    def enforced(self) -> bool:
        """Whether guarded routes need a key now. In ``auto`` mode, on loopback, creating the first
        key turns this on without a restart; a store not read yet counts as empty there."""
        if self.mode == "off":
            return False
        if self.mode == "on" or not self.loopback:
            return True
        return bool(self._by_digest)

    def identify(self, key: str) -> KeyRecord:
        """The record of a presented key, or :class:`Unauthorized`."""
        if not self.loaded:
            raise KeyStoreUnavailable("API keys have not been loaded yet")
        digest = digest_of(key)
        # The dict lookup's timing depends only on the digest of the presented key, which its sender
        # knows already; the final comparison of the digests is constant-time.
        record = self._by_digest.get(digest)
        if record is None or not hmac.compare_digest(record.digest.encode(), digest.encode()):
            raise Unauthorized("invalid API key")
        status = record.status(datetime.now(UTC))
        if status != "active":
            raise Unauthorized(f"API key {record.name!r} is {status}")
        return record

    async def admit(self, record: KeyRecord) -> None:
        """Count the request against the key's limits, or raise :class:`RateLimited`."""
        try:
            wait = await self.limiter.admit(record)
        except KeyStoreUnavailable as exc:
            self._limiter_failed(exc)
            return  # limits fail open: a Redis outage must not take the service down with it
        self._limiter_ok()
        if wait > 0:
            limits = ", ".join(
                f"{n} {unit} per minute"
                for n, unit in ((record.rpm, "requests"), (record.tpm, "tokens"))
                if n is not None
            )
            raise RateLimited(f"key {record.name!r} is over its rate limit ({limits})", retry_after=wait)

    async def reserve(self, record: KeyRecord, tokens: int) -> int:
        """Hold a request's estimated tokens on the key's token bucket; the tokens held (0 when the
        key has no token limit or the limiter is down), or :class:`RateLimited`."""
        if not record.tpm:
            return 0
        try:
            wait = await self.limiter.reserve(record, tokens)
        except KeyStoreUnavailable as exc:
            self._limiter_failed(exc)
            return 0  # fail open, as admit does
        self._limiter_ok()
        if wait > 0:
            raise RateLimited(
                f"key {record.name!r} is over its rate limit ({record.tpm} tokens per minute): "
                f"this request may need up to {tokens} tokens",
                retry_after=wait,
            )
        return tokens

    async def settle(
        self, record: KeyRecord, *, reserved: int, tokens: int, search_units: int, model: str = ""
    ) -> None:
        """What a request scored replaces what was reserved for it; ``model``: the served model it
        scored with, for usage by model and day ("" when it scored nothing)."""
        try:
            await self.limiter.settle(
                record, reserved=reserved, tokens=tokens, search_units=search_units, model=model
            )
        except KeyStoreUnavailable as exc:
            self._limiter_failed(exc)
        else:
            self._limiter_ok()

    async def charge(self, record: KeyRecord, *, tokens: int, search_units: int, model: str = "") -> None:
        await self.settle(record, reserved=0, tokens=tokens, search_units=search_units, model=model)

    def _limiter_failed(self, exc: KeyStoreUnavailable) -> None:
        if not self._limiter_down:
            log.warning("%s; rate limits are not enforced and usage is not recorded until it is back", exc)
        else:
            log.debug("%s", exc)
        self._limiter_down = True

    def _limiter_ok(self) -> None:
        if self._limiter_down:
            log.info("rate limits and usage accounting are back")
        self._limiter_down = False


def open_store(settings: Settings) -> KeyStore | None:
    """Static keys when given, else the keys file when set, else Redis when set, else none."""
    if settings.api_keys:
        return StaticKeyStore(settings.api_keys)
    if settings.keys_file:
        return FileKeyStore(settings.keys_file)
    if settings.redis_url:
        return RedisKeyStore(settings.redis_url, prefix=settings.redis_prefix)
    return None


def build_gate(settings: Settings, *, redis: SharedRedis | None = None) -> Gate:
    """``redis``: the process's one Redis client (the service's), shared by keys, limits, usage
    and the cache; without it, a gate over Redis opens and closes a client of its own."""
    if settings.auth == "off":
        return Gate(mode="off")
    store: KeyStore | None
    if settings.redis_url:
        own = redis is None
        shared = redis or SharedRedis(settings.redis_url, prefix=settings.redis_prefix)
        store = (
            StaticKeyStore(settings.api_keys)
            if settings.api_keys
            else FileKeyStore(settings.keys_file)
            if settings.keys_file
            else RedisKeyStore(shared)
        )
        return Gate(
            mode=settings.auth,
            loopback=is_loopback(settings.host),
            store=store,
            limiter=RedisLimiter(shared),
            on_close=shared.close if own else None,
        )
    store = open_store(settings)
    return Gate(mode=settings.auth, loopback=is_loopback(settings.host), store=store)


async def check_exposure(settings: Settings) -> None:
    """Refuse (:class:`ConfigError`) settings that would serve beyond loopback without keys, or
    name a keys file that cannot be read. A Redis that does not answer yet is not a refusal: the
    server then answers 503 on guarded routes until it can read the keys."""
    if settings.auth == "off":
        return
    store = open_store(settings)
    if store is None:
        if settings.auth == "on":
            raise ConfigError("auth is on but no key store is set: give --keys-file or --redis-url")
        if not is_loopback(settings.host):
            raise ConfigError(_refusal(settings.host))
        return
    async with store:
        try:
            records = await store.records()
        except KeyStoreUnavailable as exc:
            if isinstance(store, FileKeyStore):
                raise ConfigError(exc.detail) from exc
            log.warning("%s; guarded routes answer 503 until it does", exc.detail)
            return
    if settings.auth == "auto" and not records and not is_loopback(settings.host):
        raise ConfigError(_refusal(settings.host))


def _refusal(host: str) -> str:
    return (
        f"refusing to serve on {host} without API keys: create one with `rerankd keys create` "
        "(and give --keys-file or --redis-url), or pass --no-auth to serve without keys"
    )
