"""Cancel a handler's work when its client disconnects.

ASGI servers do not cancel a handler whose client went away: without this, a closed connection's
documents would still be scored. Once the body has been read, the next ``receive()`` message is
``http.disconnect``, and only when the client leaves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from litestar.types import Receive

from rerankd.errors import ClientClosedRequest

__all__ = ["until_disconnect"]

T = TypeVar("T")


async def until_disconnect(receive: Receive, work: Awaitable[T]) -> T:
    """Await ``work`` in the calling task; a watcher task cancels it if the client leaves first.

    One extra task per request, not two and an ``asyncio.wait``: the work runs inline, and a fully
    cached request is over before the watcher first runs. No race: the watcher can only run while
    this task is suspended inside ``work``, and it is cancelled before this task next suspends."""
    current = asyncio.current_task()
    assert current is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        while (await receive())["type"] != "http.disconnect":
            pass
        gone = True
        current.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if gone:  # our own cancellation, not the server's (shutdown): the work is dropped
            current.uncancel()
            raise ClientClosedRequest() from None
        raise
    finally:
        watcher.cancel()
