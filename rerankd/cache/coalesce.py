"""In-process coalescing: concurrent requests that need the same uncached pair score it once."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Generic, TypeVar

__all__ = ["Coalescer", "Superseded"]

V = TypeVar("V")


class Superseded(Exception):
    """The request that owned a pair did not produce its value (it failed or was cancelled)."""


class Coalescer(Generic[V]):
    """A map of in-flight values by key.

    ``claim`` splits the keys a request misses into those it must compute (it owns them) and
    futures of those another request is computing. The owner calls ``resolve`` or ``fail``;
    resolved entries stay until ``release`` (after the value reached the store), so a request
    that missed the store just before the write landed still finds the value here.
    """

    def __init__(self) -> None:
        self._inflight: dict[bytes, asyncio.Future[V]] = {}

    def __len__(self) -> int:
        return len(self._inflight)

    def claim(self, keys: Iterable[bytes]) -> tuple[list[bytes], dict[bytes, asyncio.Future[V]]]:
        owned: list[bytes] = []
        shared: dict[bytes, asyncio.Future[V]] = {}
        loop = asyncio.get_running_loop()
        for key in keys:
            fut = self._inflight.get(key)
            if fut is None:
                fut = loop.create_future()
                # Nobody may await it; mark its exception retrieved so none is logged as lost.
                fut.add_done_callback(_consume)
                self._inflight[key] = fut
                owned.append(key)
            else:
                shared[key] = fut
        return owned, shared

    def resolve(self, values: Mapping[bytes, V]) -> None:
        for key, value in values.items():
            fut = self._inflight.get(key)
            if fut is not None and not fut.done():
                fut.set_result(value)

    def fail(self, keys: Sequence[bytes]) -> None:
        """Wake the waiters of ``keys`` with :class:`Superseded` and forget the keys."""
        for key in keys:
            fut = self._inflight.get(key)
            if fut is not None and not fut.done():
                fut.set_exception(Superseded())
                del self._inflight[key]

    def release(self, keys: Iterable[bytes]) -> None:
        """Forget resolved keys: from now on readers find them in the store."""
        for key in keys:
            fut = self._inflight.get(key)
            if fut is not None and fut.done():
                del self._inflight[key]


def _consume(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()
