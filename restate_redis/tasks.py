"""Work on the items of an async iterable, a bounded number at a time (the store's imports and
exports, the tools' moves to and from Restate)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def bounded(
    items: AsyncIterator[T], work: Callable[[T], Awaitable[None]], limit: int
) -> None:
    """``work`` on every item, at most ``limit`` at a time; the first failure stops the
    starting of new ones, the running ones finish, then it is raised."""
    running: set[asyncio.Task[None]] = set()
    failure: BaseException | None = None
    try:
        async for item in items:
            while len(running) >= limit:
                finished, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                failure = next((t.exception() for t in finished if t.exception()), None)
                if failure is not None:
                    break
            if failure is not None:
                break
            running.add(asyncio.ensure_future(work(item)))
        if running:
            finished, _ = await asyncio.wait(running)
            running = set()
            if failure is None:
                failure = next((t.exception() for t in finished if t.exception()), None)
    finally:
        for task in running:
            task.cancel()
    if failure is not None:
        raise failure
