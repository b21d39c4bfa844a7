"""The reads of an object's history stream (see :mod:`restate_redis.history`): pages from the
newest entry back (XREVRANGE), and the entries after an id as they are committed (XREAD
BLOCK), each call retried after transient errors (a failover, a lost connection)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

from .connection import RedisClient
from .retry import RetryPolicy, redis_errors

Row = tuple[bytes, dict[bytes, bytes]]


def _id(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


class Timeline:
    """History streams read on one client."""

    __slots__ = ("block_ms", "client", "retry")

    def __init__(self, client: RedisClient, retry: RetryPolicy, wait_slice: float) -> None:
        self.client = client
        self.retry = retry
        self.block_ms = max(1, int(wait_slice * 1000))
        """The longest single XREAD BLOCK: shorter than the client's socket timeout."""

    async def newest_first(self, stream: str, what: str, page: int = 100) -> AsyncIterator[Row]:
        """Every entry of ``stream``, newest first, in pages of ``page``."""
        client, start = self.client, "+"
        while True:

            def call(first: str = start) -> Any:
                return client.xrevrange(stream, first, "-", count=page)

            async with redis_errors(f"reading the history of {what}"):
                rows = await self.retry.run("history", what, call)
            for entry_id, fields in rows:
                yield entry_id, fields
            if len(rows) < page:
                return
            start = "(" + _id(rows[-1][0])

    async def newest_id(self, stream: str, what: str) -> str:
        """The id of the newest entry of ``stream``, or "0-0" when it has none."""
        async for entry_id, _ in self.newest_first(stream, what, page=1):
            return _id(entry_id)
        return "0-0"

    async def after(self, streams: Mapping[str, str], what: str) -> list[tuple[str, list[Row]]]:
        """The entries after each stream's id (``streams``: stream -> id), waiting up to
        ``block_ms`` for one; every stream in one slot. (stream, rows) per stream with any."""
        client, block = self.client, self.block_ms
        asked: dict[Any, Any] = dict(streams)

        def call() -> Any:
            return client.xread(asked, count=100, block=block)

        async with redis_errors(f"watching the history of {what}"):
            reply = await self.retry.run("watch", what, call)
        if not reply:
            return []
        items = reply.items() if isinstance(reply, dict) else reply  # RESP3 / RESP2
        out: list[tuple[str, list[Row]]] = []
        for stream, rows in items:
            out.append((_id(stream), [(entry_id, fields) for entry_id, fields in rows]))
        return out
