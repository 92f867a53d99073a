"""Blocking work off the event loop, on threads that never hold up the process's exit."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable
from typing import ParamSpec, TypeVar

__all__ = ["in_daemon_thread"]

P = ParamSpec("P")
T = TypeVar("T")


async def in_daemon_thread(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """Run ``fn`` on a new daemon thread and await its result.

    Unlike ``asyncio.to_thread``, whose executor threads the interpreter joins at exit, a stop
    signal that arrives while ``fn`` runs (a model still loading) lets the process exit at once.
    Cancelling the await does not stop ``fn``; its result is then dropped."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()
    context = contextvars.copy_context()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result = context.run(fn, *args, **kwargs)
        except BaseException as exc:
            loop.call_soon_threadsafe(settle, None, exc)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=run, name=f"rerankd-{getattr(fn, '__name__', 'work')}", daemon=True).start()
    return await future
