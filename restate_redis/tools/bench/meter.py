"""Round trips and bytes on the wire, counted by a redis-py connection class.

``CountingConnection`` is passed to a ``redis.asyncio`` pool as ``connection_class``. It wraps
the connection's stream writer and reader, so it counts what reaches the socket whichever path
sent it (redis-py's ``execute_command``, a pipeline, or the store's link in ``wire.py``), from
outside: nothing in the store knows it is counted.

A round trip: redis-py writes a command, or a whole pipeline, in one ``send_packed_command``
call and then waits for the replies, so each such call is one. The store's link writes the
commands of the sessions that issued one in the same step of the event loop together, each
its own session's round trip: a write that does not come through ``send_packed_command`` is
parsed (``hiredis.Reader``) and each whole command in it counts one. Bytes out are what the
writes carry; bytes in are what the parser reads from the stream; a reply is one
``read_response`` call. The link, which parses its replies as the socket delivers them, takes
the socket's protocol over: the transport the writer hands out wraps whatever protocol is set
on it, and counts the bytes and (parsed again) the replies that reach it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import hiredis
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


class _CountingWriter:
    """Wraps the connection's StreamWriter: counts what each write carries."""

    def __init__(self, writer: asyncio.StreamWriter, owner: CountingConnection) -> None:
        self._writer = writer
        self._owner = owner
        self.transport = _CountingTransport(writer.transport)

    def write(self, data: bytes) -> None:
        self._owner.wrote([data])
        self._writer.write(data)

    def writelines(self, data: Any) -> None:
        chunks = list(data)
        self._owner.wrote(chunks)
        self._writer.writelines(chunks)

    def __getattr__(self, name: str) -> Any:  # drain, close, wait_closed, ...
        return getattr(self._writer, name)


class _CountingTransport:
    """Wraps the connection's transport so that a protocol set on it (the link's) is counted."""

    def __init__(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(_CountingProtocol(protocol))

    def get_protocol(self) -> asyncio.BaseProtocol:
        protocol = self._transport.get_protocol()
        if isinstance(protocol, _CountingProtocol):
            return protocol.inner
        return protocol

    def __getattr__(self, name: str) -> Any:  # is_closing, abort, get_write_buffer_size, ...
        return getattr(self._transport, name)


class _CountingProtocol(asyncio.Protocol):
    """Counts the bytes and whole replies the socket delivers, then hands them on."""

    def __init__(self, inner: asyncio.BaseProtocol) -> None:
        self.inner = inner
        self._replies: Any = hiredis.Reader(notEnoughData=_MORE)

    def data_received(self, data: bytes) -> None:
        METER.bytes_in += len(data)
        try:
            self._replies.feed(data)
            while self._replies.gets() is not _MORE:
                METER.replies += 1
        except hiredis.ProtocolError:
            self._replies = hiredis.Reader(notEnoughData=_MORE)
        self.inner.data_received(data)  # type: ignore[attr-defined]

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()  # type: ignore[attr-defined, no-any-return]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


_MORE = object()  # what the readers return until a whole command or reply is in


class CountingConnection(Connection):
    """A TCP connection that counts its round trips, replies and bytes in :data:`METER`."""

    _sending = 0  # send_packed_command calls in progress (a health check's nests in another)

    async def _connect(self) -> None:
        await super()._connect()  # type: ignore[no-untyped-call]
        self._reader = _CountingReader(self._reader)  # type: ignore[arg-type, assignment]
        self._writer = _CountingWriter(self._writer, self)  # type: ignore[arg-type, assignment]

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        self._sending += 1
        try:
            await super().send_packed_command(command, check_health)
        finally:
            self._sending -= 1

    def wrote(self, chunks: list[bytes]) -> None:
        """``chunks`` went to the socket in one write: one round trip when redis-py sent them,
        one per command when the link did."""
        if self._sending:
            self.sent([command_name(chunks)], sum(len(chunk) for chunk in chunks))
            return
        commands: Any = hiredis.Reader(notEnoughData=_MORE)
        names = []
        for chunk in chunks:
            commands.feed(chunk)
            while (command := commands.gets()) is not _MORE:
                names.append(bytes(command[0]).decode(errors="replace").upper())
        self.sent(names, sum(len(chunk) for chunk in chunks))

    def sent(self, names: list[str], size: int) -> None:
        """One write of ``size`` bytes carried the round trips of commands ``names`` (a
        pipeline's is one, named by its first command)."""
        METER.round_trips += len(names)
        METER.bytes_out += size

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        METER.replies += 1
        return await super().read_response(*args, **kwargs)


def command_name(chunks: list[bytes]) -> str:
    """The name of the (first) command in a packed write: ``*N\\r\\n$len\\r\\nNAME\\r\\n...``."""
    parts = b"".join(chunks[:2]).split(b"\r\n")
    return parts[2].decode(errors="replace").upper() if len(parts) > 2 else "?"
