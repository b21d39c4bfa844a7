"""Stores the tests open on a server or cluster of their own."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from restate_redis import RedisStateStore


@contextlib.asynccontextmanager
async def empty_store(url: str, **options: Any) -> AsyncIterator[RedisStateStore]:
    """``RedisStateStore.from_url(url, **options)`` on an emptied database (every master of a
    cluster), closed at the end."""
    async with RedisStateStore.from_url(url, **options) as store:
        await store.client.flushall()
        yield store
