"""Round trips and bytes on the wire, counted by a redis-py connection class.

``CountingConnection`` is passed to a ``redis.asyncio`` pool as ``connection_class``. It wraps
the connection's stream writer and reader, so it counts what reaches the socket whichever path
sent it (redis-py's ``execute_command``, a pipeline, or the store's link in ``wire.py``). A
round trip is one write call: redis-py writes a command, or a whole pipeline, at once and then
waits for the replies; a :class:`~restate_redis.backend.wire.Batch` of several sessions'
commands written together on the link counts one round trip for each. Bytes out are what those
writes carry; bytes in are what the parser reads from the stream; a reply is one
``read_response`` call. The store's link, which parses its replies as the socket delivers them,
reports its bytes and replies through :meth:`CountingConnection.link_received`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from redis.asyncio.connection import Connection

from ...backend.wire import Batch


@dataclass
class Meter:
    """Counters shared by every :class:`CountingConnection` of this process."""

    round_trips: int = 0
    replies: int = 0
    bytes_out: int = 0
    bytes_in: int = 0

    def reset(self) -> None:
        self.round_trips = self.replies = self.bytes_out = self.bytes_in = 0


METER = Meter()


class _CountingReader:
    """Wraps the connection's StreamReader and counts the bytes the parser takes from it."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader

    async def read(self, n: int = -1) -> bytes:
        data = await self._reader.read(n)
        METER.bytes_in += len(data)
        return data

    async def readline(self) -> bytes:
        data = await self._reader.readline()
        METER.bytes_in += len(data)
        return data

    async def readexactly(self, n: int) -> bytes:
        data = await self._reader.readexactly(n)
        METER.bytes_in += len(data)
        return data

    def __getattr__(self, name: str) -> Any:  # at_eof, _buffer, ... used by the parsers
        return getattr(self._reader, name)


class _CountingWriter:
    """Wraps the connection's StreamWriter; each write is one round trip of ``owner``."""

    def __init__(self, writer: asyncio.StreamWriter, owner: CountingConnection) -> None:
        self._writer = writer
        self._owner = owner

    def write(self, data: bytes) -> None:
        self._owner.sent([data])
        self._writer.write(data)

    def writelines(self, data: Any) -> None:
        if isinstance(data, Batch):  # several sessions' commands, written together
            for command in data:
                self._owner.sent([command])
        else:
            self._owner.sent(list(data))
        self._writer.writelines(data)

    def __getattr__(self, name: str) -> Any:  # drain, close, wait_closed, transport, ...
        return getattr(self._writer, name)


class CountingConnection(Connection):
    """A TCP connection that counts its round trips, replies and bytes in :data:`METER`."""

    async def _connect(self) -> None:
        await super()._connect()  # type: ignore[no-untyped-call]
        self._reader = _CountingReader(self._reader)  # type: ignore[arg-type, assignment]
        self._writer = _CountingWriter(self._writer, self)  # type: ignore[arg-type, assignment]

    def sent(self, chunks: list[bytes]) -> None:
        """One write of ``chunks`` (a command or a pipeline) went to the socket."""
        METER.round_trips += 1
        METER.bytes_out += sum(len(chunk) for chunk in chunks)

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        METER.replies += 1
        return await super().read_response(*args, **kwargs)

    def link_received(self, size: int, replies: int) -> None:
        """The store's link parsed ``size`` bytes holding ``replies`` replies."""
        METER.bytes_in += size
        METER.replies += replies


def command_name(chunks: list[bytes]) -> str:
    """The name of the (first) command in a packed write: ``*N\\r\\n$len\\r\\nNAME\\r\\n...``."""
    parts = b"".join(chunks[:2]).split(b"\r\n")
    return parts[2].decode(errors="replace").upper() if len(parts) > 2 else "?"
