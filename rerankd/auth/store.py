"""Where key records live: a JSON keys file (e.g. a mounted Kubernetes Secret) or Redis.

Both stores keep the same contract (``tests/auth/test_store_contract.py`` runs one suite against each).
A running server polls :meth:`KeyStore.version`, a cheap change marker, and reloads all records when
it changes; the CLI writes through :meth:`create` and :meth:`revoke`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import uuid
from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Self

import msgspec
from redis.exceptions import RedisError

from rerankd.auth.keys import KeyRecord, digest_of
from rerankd.errors import KeyExists, KeyNotFound, KeyStoreUnavailable
from rerankd.redisconn import DEFAULT_PREFIX, SharedRedis

__all__ = [
    "FileKeyStore",
    "KeyStore",
    "LimitChanges",
    "RedisKeyStore",
    "StaticKeyStore",
    "auth_prefix",
    "connect_redis",
]

log = logging.getLogger(__name__)


def auth_prefix(redis_prefix: str) -> str:
    """Where key records, limits and usage live: under the deployment's prefix."""
    return f"{redis_prefix}auth:"


class KeyStore(ABC):
    """Key records by name. Failures to reach or read the store raise :class:`KeyStoreUnavailable`."""

    #: Where the records are, for messages ("keys file /etc/rerankd/keys.json", "Redis").
    description: str

    @abstractmethod
    async def version(self) -> Hashable:
        """A value that changes whenever any record changes."""

    @abstractmethod
    async def records(self) -> list[KeyRecord]: ...

    async def get(self, name: str) -> KeyRecord | None:
        return next((r for r in await self.records() if r.name == name), None)

    @abstractmethod
    async def create(self, record: KeyRecord) -> None:
        """Add a record; :class:`KeyExists` if the name is taken (revoked keys keep their name)."""

    @abstractmethod
    async def revoke(self, name: str, *, when: datetime | None = None) -> KeyRecord:
        """Mark a key revoked (kept on record for usage and audit); revoking twice keeps the first time."""

    async def update(self, name: str, changes: LimitChanges) -> KeyRecord:
        """Set or clear (``None``) a key's limits; servers apply them at their next reload."""
        raise KeyStoreUnavailable(f"the limits in {self.description} cannot be changed here")

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


#: New limits by field (``rpm``, ``tpm``); ``None`` clears a limit, a missing field keeps it.
LimitChanges = Mapping[str, int | None]
_LIMIT_FIELDS = frozenset({"rpm", "tpm"})


def _updated(record: KeyRecord | None, name: str, changes: LimitChanges) -> KeyRecord:
    if record is None:
        raise KeyNotFound(f"no key named {name!r}")
    unknown = set(changes) - _LIMIT_FIELDS
    if unknown:
        raise ValueError(f"not a limit: {', '.join(sorted(unknown))}")
    return msgspec.structs.replace(record, **changes)


def _revoked(record: KeyRecord | None, name: str, when: datetime | None) -> KeyRecord:
    if record is None:
        raise KeyNotFound(f"no key named {name!r}")
    if record.revoked is not None:
        return record
    return msgspec.structs.replace(record, revoked=when or datetime.now(UTC))


# -- static keys ---------------------------------------------------------------------------------


class StaticKeyStore(KeyStore):
    """Keys given on the command line or in the environment (``--api-key``), held as digests only.

    Read-only: the keys are the server's settings, changed by restarting it.
    """

    description = "static keys (--api-key)"

    def __init__(self, keys: Iterable[str]) -> None:
        created = datetime.now(UTC)
        digests = dict.fromkeys(digest_of(k) for k in keys)  # one record per distinct key
        # Named by position and a short digest prefix: logs can tell keys apart, never show one.
        self._records = [
            KeyRecord(name=f"static-{i}-{d[:8]}", digest=d, created=created) for i, d in enumerate(digests, 1)
        ]

    async def version(self) -> Hashable:
        return len(self._records)

    async def records(self) -> list[KeyRecord]:
        return list(self._records)

    async def create(self, record: KeyRecord) -> None:
        raise KeyStoreUnavailable("static keys are set by --api-key; restart the server to change them")

    async def revoke(self, name: str, *, when: datetime | None = None) -> KeyRecord:
        raise KeyStoreUnavailable("static keys are set by --api-key; restart the server to change them")

    async def update(self, name: str, changes: LimitChanges) -> KeyRecord:
        raise KeyStoreUnavailable("static keys have no limits; use a keys file or Redis for limits")


# -- keys file ---------------------------------------------------------------------------------


class KeysFile(msgspec.Struct, omit_defaults=True):
    keys: list[KeyRecord] = msgspec.field(default_factory=list)


class FileKeyStore(KeyStore):
    """A JSON file ``{"keys": [records]}``. Writers replace it atomically, so readers never see half."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.description = f"keys file {self.path}"

    async def version(self) -> Hashable:
        # stat follows symlinks: a Kubernetes Secret update swaps the target, changing inode and mtime.
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise KeyStoreUnavailable(f"cannot read {self.description}: {exc.strerror}") from exc
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _read(self, *, missing_ok: bool) -> KeysFile:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            if missing_ok:
                return KeysFile()
            raise KeyStoreUnavailable(f"{self.description} does not exist") from None
        except OSError as exc:
            raise KeyStoreUnavailable(f"cannot read {self.description}: {exc.strerror}") from exc
        try:
            return msgspec.json.decode(raw, type=KeysFile)
        except msgspec.DecodeError as exc:
            raise KeyStoreUnavailable(f"cannot parse {self.description}: {exc}") from exc

    def _write(self, data: KeysFile) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(msgspec.json.format(msgspec.json.encode(data)) + b"\n")
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    async def records(self) -> list[KeyRecord]:
        return self._read(missing_ok=False).keys

    async def create(self, record: KeyRecord) -> None:
        data = self._read(missing_ok=True)
        if any(r.name == record.name for r in data.keys):
            raise KeyExists(f"a key named {record.name!r} already exists in {self.description}")
        data.keys.append(record)
        self._write(data)

    async def update(self, name: str, changes: LimitChanges) -> KeyRecord:
        data = self._read(missing_ok=False)
        index = next((i for i, r in enumerate(data.keys) if r.name == name), None)
        updated = _updated(None if index is None else data.keys[index], name, changes)
        assert index is not None
        data.keys[index] = updated
        self._write(data)
        return updated

    async def revoke(self, name: str, *, when: datetime | None = None) -> KeyRecord:
        data = self._read(missing_ok=False)
        index = next((i for i, r in enumerate(data.keys) if r.name == name), None)
        revoked = _revoked(None if index is None else data.keys[index], name, when)
        assert index is not None
        if revoked is not data.keys[index]:
            data.keys[index] = revoked
            self._write(data)
        return revoked


# -- Redis -------------------------------------------------------------------------------------


def connect_redis(redis: SharedRedis | str, prefix: str = DEFAULT_PREFIX) -> tuple[SharedRedis, bool]:
    """The shared client, or one of its own for a URL (then True: the caller closes it)."""
    if isinstance(redis, SharedRedis):
        return redis, False
    return SharedRedis(redis, prefix=prefix), True


class RedisKeyStore(KeyStore):
    """Records as JSON in one hash (name → record), and a version set to a fresh random value on
    every change: a counter would repeat its values after Redis lost its data and start again.

    The version's name holds the hash's name as its hash tag, so both sit in one Redis Cluster
    slot and change in one transaction."""

    def __init__(self, redis: SharedRedis | str, *, prefix: str = DEFAULT_PREFIX) -> None:
        self.shared, self._own = connect_redis(redis, prefix)
        self.description = "Redis"
        self.redis = self.shared.client
        self._KEYS = auth_prefix(self.shared.prefix) + "keys"
        self._VERSION = "{" + self._KEYS + "}:version"

    async def version(self) -> Hashable:
        try:
            return await self.redis.get(self._VERSION)
        except (RedisError, OSError) as exc:
            raise KeyStoreUnavailable(f"cannot reach Redis: {exc}") from exc

    def _decode(self, name: bytes | str, raw: bytes | str) -> KeyRecord | None:
        try:
            return msgspec.json.decode(raw, type=KeyRecord)
        except msgspec.DecodeError as exc:
            # One bad record must not lock every other key out.
            log.error("ignoring unreadable key record %r in Redis: %s", name, exc)
            return None

    async def records(self) -> list[KeyRecord]:
        try:
            raw = await self.redis.hgetall(self._KEYS)
        except (RedisError, OSError) as exc:
            raise KeyStoreUnavailable(f"cannot reach Redis: {exc}") from exc
        decoded = (self._decode(k, v) for k, v in sorted(raw.items()))
        return [r for r in decoded if r is not None]

    async def get(self, name: str) -> KeyRecord | None:
        try:
            raw = await self.redis.hget(self._KEYS, name)
        except (RedisError, OSError) as exc:
            raise KeyStoreUnavailable(f"cannot reach Redis: {exc}") from exc
        return None if raw is None else self._decode(name, raw)

    async def create(self, record: KeyRecord) -> None:
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hsetnx(self._KEYS, record.name, msgspec.json.encode(record))
                pipe.set(self._VERSION, uuid.uuid4().hex)
                added, _ = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise KeyStoreUnavailable(f"cannot reach Redis: {exc}") from exc
        if not added:
            raise KeyExists(f"a key named {record.name!r} already exists in Redis")

    async def update(self, name: str, changes: LimitChanges) -> KeyRecord:
        updated = _updated(await self.get(name), name, changes)
        await self._put(updated)
        return updated

    async def _put(self, record: KeyRecord) -> None:
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(self._KEYS, record.name, msgspec.json.encode(record))
                pipe.set(self._VERSION, uuid.uuid4().hex)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise KeyStoreUnavailable(f"cannot reach Redis: {exc}") from exc

    async def revoke(self, name: str, *, when: datetime | None = None) -> KeyRecord:
        current = await self.get(name)
        revoked = _revoked(current, name, when)
        if revoked is not current:
            try:
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.hset(self._KEYS, name, msgspec.json.encode(revoked))
                    pipe.set(self._VERSION, uuid.uuid4().hex)
                    await pipe.execute()
            except (RedisError, OSError) as exc:
                raise KeyStoreUnavailable(f"cannot reach Redis: {exc}") from exc
        return revoked

    async def close(self) -> None:
        if self._own:
            await self.shared.close()
