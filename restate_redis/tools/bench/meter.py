"""Round trips and bytes on the wire, counted from outside the client through public hooks.

A ``redis.asyncio`` pool made with ``connection_class=CountingConnection``, used on a
:class:`CountingLoop` (the bench runs on one, and so does the test suite), counts in
:data:`METER` what each of its connections sends and receives, whichever path sent it
(redis-py's ``execute_command``, a pipeline, or the store's link in ``wire.py``). Nothing in the
store knows it is counted, and nothing here touches a private attribute of redis-py or asyncio:

- While a CountingConnection connects (``connect``; ``connect_check_health`` in redis-py 6
  and later), the loop's ``create_connection`` (what ``asyncio.open_connection`` calls) opens
  its socket as a :class:`CountingSocket`, a ``socket.socket`` whose ``send``, ``sendmsg``,
  ``recv`` and ``recv_into`` count what they move, and hands it to asyncio
  (``create_connection(sock=...)``). Bytes out and in are what that socket moved.
- A round trip: redis-py writes a command, or a whole pipeline, in one ``send_packed_command``
  call and then waits for the replies, so each call is one; the call announces the bytes it
  hands over, which its socket then sends first. The store's link writes the commands of the
  sessions that issued one in the same step of the event loop together, each its own
  session's round trip: what a socket sends beyond the bytes redis-py announced is parsed
  (``hiredis.Reader``) and each whole command in it counts one.
- A reply: each whole reply parsed from the bytes received.

The counting is probed, not assumed. A connection whose socket the loop did not open (another
event loop; a TLS connection, whose socket moves ciphertext), or one over which redis-py read a
reply while its socket counted nothing (an asyncio whose transports no longer call the socket's
methods), sets ``METER.unavailable`` to the reason, and the bench reports the columns as not
counted rather than wrong.
"""

from __future__ import annotations

import asyncio
import contextvars
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import hiredis
from redis.asyncio.connection import Connection

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

__all__ = ["METER", "Meter", "CountingConnection", "CountingLoop", "CountingSocket", "Tap"]


@dataclass
class Meter:
    """Counters shared by every :class:`CountingConnection` of this process."""

    round_trips: int = 0
    replies: int = 0
    bytes_out: int = 0
    bytes_in: int = 0
    # Why the counters cannot be trusted, once a probe failed (not cleared by reset()).
    unavailable: str | None = None

    def reset(self) -> None:
        self.round_trips = self.replies = self.bytes_out = self.bytes_in = 0

    def fail(self, why: str) -> None:
        if self.unavailable is None:
            self.unavailable = why


METER = Meter()

_MORE = object()  # what the readers return until a whole command or reply is in
# The connection connecting in this task, whose socket the loop opens as a CountingSocket.
_CONNECTING: contextvars.ContextVar[CountingConnection | None] = contextvars.ContextVar(
    "restate_redis_meter_connecting", default=None
)


class Tap:
    """What the socket of one connection moved."""

    def __init__(self, conn: CountingConnection) -> None:
        self.conn = conn
        self.bytes_out = self.bytes_in = 0
        self.verified = False  # a reply was read over it, and its socket had counted bytes
        self._commands: Any = hiredis.Reader(notEnoughData=_MORE)
        self._replies: Any = hiredis.Reader(notEnoughData=_MORE)

    def sent(self, data: memoryview) -> None:
        """The socket sent ``data``: redis-py's announced bytes first, then the link's
        commands."""
        size = len(data)
        self.bytes_out += size
        METER.bytes_out += size
        ours = min(size, self.conn.announced)
        self.conn.announced -= ours
        if ours == size:
            return
        reader, names = self._commands, []
        try:
            reader.feed(data[ours:])
            while (command := reader.gets()) is not _MORE:
                names.append(bytes(command[0]).decode(errors="replace").upper())
        except hiredis.ProtocolError:
            self._commands = hiredis.Reader(notEnoughData=_MORE)
        if names:
            self.conn.sent(names)

    def received(self, data: memoryview) -> None:
        size = len(data)
        self.bytes_in += size
        METER.bytes_in += size
        try:
            self._replies.feed(data)
            while self._replies.gets() is not _MORE:
                METER.replies += 1
        except hiredis.ProtocolError:
            self._replies = hiredis.Reader(notEnoughData=_MORE)


class CountingSocket(socket.socket):
    """A socket that tells its :class:`Tap` what it sent and received."""

    tap: Tap

    def send(self, data: ReadableBuffer, flags: int = 0, /) -> int:
        n = super().send(data, flags)
        self.tap.sent(memoryview(data).cast("B")[:n])
        return n

    def sendmsg(
        self,
        buffers: Iterable[ReadableBuffer],
        ancdata: Iterable[Any] = (),
        flags: int = 0,
        address: Any = None,
        /,
    ) -> int:
        views = [memoryview(b).cast("B") for b in buffers]
        extra = () if address is None else (address,)
        n = super().sendmsg(views, ancdata, flags, *extra)
        left = n
        for view in views:
            if left <= 0:
                break
            self.tap.sent(view[:left])
            left -= len(view)
        return n

    def recv(self, bufsize: int, flags: int = 0, /) -> bytes:
        data = super().recv(bufsize, flags)
        self.tap.received(memoryview(data))
        return data

    def recv_into(self, buffer: WriteableBuffer, nbytes: int = 0, flags: int = 0, /) -> int:
        n = super().recv_into(buffer, nbytes, flags)
        self.tap.received(memoryview(buffer).cast("B")[:n])
        return n


class CountingLoop(asyncio.SelectorEventLoop):
    """asyncio's selector event loop, opening the socket of a connecting
    :class:`CountingConnection` as a :class:`CountingSocket` (any other connection as usual)."""

    async def create_connection(  # type: ignore[override]  # (the overloads, as one)
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        host: Any = None,  # (passed on as asyncio takes them)
        port: Any = None,
        **kwargs: Any,
    ) -> tuple[asyncio.BaseTransport, asyncio.BaseProtocol]:
        conn = _CONNECTING.get()
        if (
            conn is None
            or (host, port) != (conn.host, conn.port)  # another connection (a Sentinel's)
            or kwargs.get("sock") is not None
            or kwargs.get("ssl")
        ):
            return await super().create_connection(protocol_factory, host, port, **kwargs)
        tap = Tap(conn)
        sock = await self._open(host, port, tap)
        try:
            connected = await super().create_connection(protocol_factory, sock=sock, **kwargs)
        except BaseException:
            sock.close()
            raise
        conn.tap = tap
        return connected

    async def _open(self, host: str, port: int, tap: Tap) -> CountingSocket:
        """A CountingSocket connected to the first address of ``host`` that accepts."""
        error: OSError | None = None
        for family, kind, proto, _, address in await self.getaddrinfo(
            host, port, type=socket.SOCK_STREAM
        ):
            sock = CountingSocket(family, kind, proto)
            sock.tap = tap
            try:
                sock.setblocking(False)
                await self.sock_connect(sock, address)
            except OSError as exc:
                sock.close()
                error = exc
                continue
            except BaseException:
                sock.close()
                raise
            return sock
        raise error or OSError(f"no address for {host}:{port}")


class CountingConnection(Connection):
    """A TCP connection that counts its round trips, replies and bytes in :data:`METER`."""

    tap: Tap | None = None  # its socket's, when the loop opened it as a CountingSocket
    announced = 0  # bytes send_packed_command handed over that its socket has not sent yet

    async def connect(self) -> None:
        await self._opening(super().connect())  # type: ignore[no-untyped-call]

    async def connect_check_health(self, *args: Any, **kwargs: Any) -> None:
        # (what connect and send_packed_command call in redis-py 6 and later)
        await self._opening(super().connect_check_health(*args, **kwargs))

    async def _opening(self, connecting: Awaitable[None]) -> None:
        """Await ``connecting`` with this connection the one whose socket the loop opens."""
        if self.is_connected:
            await connecting
            return
        self.tap = None
        token = _CONNECTING.set(self)
        try:
            await connecting
        finally:
            _CONNECTING.reset(token)
        if self.tap is None and self.is_connected:
            METER.fail(
                "a connection's socket was not opened by the meter's CountingLoop (the "
                f"event loop is a {type(asyncio.get_running_loop()).__name__}, or the "
                "connection uses TLS)"
            )

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if isinstance(command, str):
            command = command.encode()
        chunks = [command] if isinstance(command, bytes) else list(command)
        self.announced += sum(len(chunk) for chunk in chunks)
        self.sent([command_name(chunks)])
        try:
            await super().send_packed_command(chunks, check_health)
        except BaseException:
            self.announced = 0  # redis-py closed the connection: nothing more goes out on it
            raise

    def sent(self, names: list[str]) -> None:
        """The round trips of commands ``names`` went out (a pipeline's is one, named by its
        first command)."""
        METER.round_trips += len(names)

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        response = await super().read_response(*args, **kwargs)
        tap = self.tap
        if tap is not None and not tap.verified:
            if tap.bytes_out and tap.bytes_in:
                tap.verified = True
            else:
                METER.fail(
                    "redis-py read a reply over a socket that counted no bytes: asyncio did "
                    "not move them through the socket's send and recv methods"
                )
        return response


def command_name(chunks: list[Any]) -> str:
    """The name of the (first) command in a packed write: ``*N\\r\\n$len\\r\\nNAME\\r\\n...``."""
    parts = b"".join(chunks[:2]).split(b"\r\n")
    return parts[2].decode(errors="replace").upper() if len(parts) > 2 else "?"
