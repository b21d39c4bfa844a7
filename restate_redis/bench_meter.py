"""Round trips and bytes on the wire, counted by a redis-py connection class (for the bench).

``CountingConnection`` is passed to a ``redis.asyncio`` pool as ``connection_class``. A round
trip is one ``send_packed_command`` call (one write, then the caller waits for the replies;
a pipeline is one round trip however many commands it carries); a reply is one
``read_response`` call. Bytes out are what ``send_packed_command`` writes; bytes in are what
the parser reads from the socket's stream.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from redis.asyncio.connection import Connection


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


class CountingConnection(Connection):
    """A TCP connection that counts its round trips, replies and bytes in :data:`METER`."""

    async def _connect(self) -> None:
        await super()._connect()  # type: ignore[no-untyped-call]
        self._reader = _CountingReader(self._reader)  # type: ignore[arg-type, assignment]

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        METER.round_trips += 1
        if isinstance(command, str):
            METER.bytes_out += len(command.encode())
        elif isinstance(command, bytes | bytearray | memoryview):
            METER.bytes_out += len(command)
        else:
            command = list(command)
            METER.bytes_out += sum(len(chunk) for chunk in command)
        await super().send_packed_command(command, check_health)

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        METER.replies += 1
        return await super().read_response(*args, **kwargs)
