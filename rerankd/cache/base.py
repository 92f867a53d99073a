"""The cache store interface: many keys in, many values out, faults never raised."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from types import TracebackType
from typing import Self

__all__ = ["CacheStore"]


class CacheStore(ABC):
    """A bytes-to-bytes store with expiry, read and written in batches.

    The contract every backend keeps (``tests/cache/test_store_contract.py`` checks it):

    - ``get_many`` answers one value or ``None`` per key, in the order of the keys.
    - A value is readable until ``ttl_s`` seconds after its last ``set_many``, then it is a miss.
    - Backend faults (unreachable, slow, refusing) are counted in ``stats`` and never raised:
      a read answers misses, a write is dropped. A cache must never fail a request.
    """

    #: True when a write costs less than queueing it (a local store): callers write inline.
    inline_writes: bool = False

    @abstractmethod
    async def open(self) -> None:
        """Prepare the backend; must not fail when the backend is down (it is retried later)."""

    @abstractmethod
    async def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]: ...

    @abstractmethod
    async def set_many(self, items: Sequence[tuple[bytes, bytes]], ttl_s: int) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    def stats(self) -> dict[str, int]:
        """Counters of hits, misses and faults since start."""
        return {}

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
