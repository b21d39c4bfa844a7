"""How a session's commands reach Redis: the hot path of every round trip.

On a single server (a ``redis.asyncio.Redis`` with a connection pool, Sentinel-managed pools
included) the store keeps one connection of its own, its *link*, and sends every session's
non-blocking commands on it (the open, commit, release and renew scripts, and lazy HGETs):

- Commands issued while the event loop runs one step are packed by hiredis and written
  together, in one system call; Redis answers them in order. Under load that turns many
  small writes and reads, each a system call and a wake-up on both ends, into a few large
  ones; alone, a command waits for nothing.
- Replies are parsed by hiredis as the socket delivers them (the link is the socket's
  protocol), and each goes straight to its caller: no reader task between them, and one
  ``socket_timeout`` timer for the link rather than one per reply (about 30 µs of client
  CPU per eager session with 32 at a time, against 50 µs through redis-py's reader). With
  redis-py's pure-Python parser a reader task reads the replies through redis-py instead.
- A caller that is cancelled while its command is in flight leaves the connection usable:
  its reply is read and dropped.
- A network error, a ``socket_timeout`` with no reply or a ``READONLY`` reply (a failover
  demoted the server) fails every command in flight on the link (the store's retry policy
  takes over; commits are recognised if they had applied) and the next command opens a new
  connection. A server that closed the idle link is noticed before the next write.

The link is made by the client's pool (``make_connection``), so it has the client's address,
TLS, credentials, database and protocol, and follows Sentinel to the current master. Blocking
commands (the lease wait's BLPOP, WAIT) and everything else go through redis-py as usual, on
pooled connections, so a slow reply never holds up the link.

On a cluster, or a client bound to one connection (``single_connection_client``), commands go
through redis-py's ``execute_command``, which routes them.

The link leans on redis-py's private parts (the connection's ``_writer``, ``_reader`` and
``_parser``, ``redis._parsers._AsyncHiredisParser``, the transport's protocol). This module
is the only one that does: every new connection is probed (the attributes are there, and a
PING through the link answers PONG) before it becomes a link, and when the probe fails the
store falls back for good to the public path, ``execute_command`` on pooled connections, with
one warning. ``RESTATE_REDIS_PUBLIC_PATH=1`` in the environment forces that path (the tests
and the bench use it to check and measure it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, NoScriptError, ReadOnlyError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .connection import RedisClient

try:  # a dependency (redis[hiredis]), but the library stays correct without it
    import hiredis
    from redis._parsers import _AsyncHiredisParser
except ImportError:  # pragma: no cover
    hiredis = None  # type: ignore[assignment]
    _AsyncHiredisParser = None  # type: ignore[assignment, misc]

_PUSH: type | None = getattr(hiredis, "PushNotification", None)  # hiredis >= 3.2

log = logging.getLogger("restate_redis")
FORCE_PUBLIC_ENV = "RESTATE_REDIS_PUBLIC_PATH"

Arg = Any  # str, bytes or int: what both packers take
Packer = Callable[[Any, tuple[Arg, ...]], bytes]


def _pack_hiredis(conn: Any, command: tuple[Arg, ...]) -> bytes:
    return hiredis.pack_command(command)  # type: ignore[no-any-return]


def _pack_python(conn: Any, command: tuple[Arg, ...]) -> bytes:
    return b"".join(conn.pack_command(*command))


class Wire:
    """Sends commands for the sessions of one store."""

    def __init__(self, client: RedisClient) -> None:
        self.client = client
        pool = getattr(client, "connection_pool", None)
        kwargs = getattr(pool, "connection_kwargs", {})
        self.direct = isinstance(client, Redis) and not client.single_connection_client
        if self.direct and os.environ.get(FORCE_PUBLIC_ENV, "") not in ("", "0"):
            self.direct = False
        self._pool = pool if self.direct else None
        utf8 = str(kwargs.get("encoding", "utf-8")).lower().replace("-", "") == "utf8"
        self._pack: Packer = _pack_hiredis if hiredis is not None and utf8 else _pack_python
        self._link: _Link | None = None
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None

    async def execute(self, *command: Arg, script: AsyncScript | None = None) -> Any:
        """Send one command, return its reply (redis-py's parsed reply, errors raised).

        ``script``: the command is its EVALSHA; on NOSCRIPT (a restarted, flushed or
        failed-over server) the script is loaded and the command sent again.
        """
        if self._pool is None:
            return await self.client.execute_command(*command)
        link = self._link
        if link is None or not link.usable():
            link = await self._connect()
            if link is None:  # the probe failed: the public path from now on
                return await self.client.execute_command(*command)
        try:
            return await link.submit(self._pack(link.conn, command))
        except NoScriptError:
            if script is None:
                raise
        await self.execute("SCRIPT", "LOAD", script.script)
        return await self.execute(*command)

    def script(
        self, script: AsyncScript, keys: Sequence[str], args: Sequence[Arg]
    ) -> Awaitable[Any]:
        """EVALSHA ``script`` (loading it first where the server does not know it)."""
        if self._pool is None:
            return script(keys, args)
        return self.execute("EVALSHA", script.sha, len(keys), *keys, *args, script=script)

    def send_now(
        self, script: AsyncScript, keys: Sequence[str], args: Sequence[Arg]
    ) -> asyncio.Future[Any] | None:
        """EVALSHA ``script`` queued on the link in this very step, ahead of any command
        issued after it; the future of its reply. None when there is no usable link (then
        send it with :meth:`script`, which may connect)."""
        link = self._link
        if self._pool is None or link is None or not link.usable():
            return None
        return link.submit(self._pack(link.conn, ("EVALSHA", script.sha, len(keys), *keys, *args)))

    async def _connect(self) -> _Link | None:
        """The link, connected now if it is missing or broken (once for concurrent callers);
        None when the connection does not pass the probe (see the module docstring)."""
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        async with self._lock:
            old = self._link
            if old is not None and old.usable():
                return old
            self._link = None
            if old is not None and old.loop is loop:  # (a link of another loop is left alone)
                await old.aclose()
            conn = self._pool.make_connection()  # type: ignore[union-attr]
            try:
                await conn.connect()
            except BaseException:
                with contextlib.suppress(Exception):
                    await conn.disconnect(nowait=True)
                raise
            if self._pool is None:  # another caller's probe failed meanwhile
                await conn.disconnect(nowait=True)
                return None
            missing = _probe(conn)
            link = None if missing else _Link(conn, loop)
            if link is not None:
                try:
                    pong = await link.submit(self._pack(conn, ("PING",)))
                except (RedisConnectionError, RedisTimeoutError, OSError):
                    await link.aclose()
                    raise  # the server, not the probe: the retry policy takes over
                except Exception as exc:
                    missing = f"PING through the link raised {exc!r}"
                else:
                    if pong not in (b"PONG", "PONG", True):
                        missing = f"PING through the link answered {pong!r}"
            if missing:
                log.warning(
                    "restate-redis: redis-py %s does not offer what the store's link needs "
                    "(%s); commands go through execute_command instead",
                    _redis_version(),
                    missing,
                )
                if link is not None:
                    await link.aclose()
                else:
                    await conn.disconnect(nowait=True)
                self.direct, self._pool = False, None
                return None
            self._link = link
            return link

    async def aclose(self) -> None:
        """Close the store's link (its pooled connections belong to the client)."""
        link, self._link = self._link, None
        if link is not None:
            await link.aclose()


class _Link:
    """One connection carrying the commands of many sessions, replies matched in order.

    With redis-py's hiredis parser (the default where hiredis is installed) the link takes the
    socket's protocol over: each chunk the socket delivers is parsed at once and every reply
    in it goes straight to its caller, with one timer per ``socket_timeout`` period instead of
    one per reply. Otherwise a reader task reads replies through redis-py.
    """

    def __init__(self, conn: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.conn = conn
        self.loop = loop
        self.error: BaseException | None = None
        self._writer: Any = conn._writer  # redis-py's StreamWriter for the connection
        self._transport: Any = self._writer.transport
        self._queued: list[bytes] = []  # packed, not written yet
        self._waiting: deque[asyncio.Future[Any]] = deque()  # written or queued, in order
        self._flush_handle: asyncio.Handle | None = None
        self._replies = _reply_reader(conn)
        # socket_timeout, kept by the link's own timer when it parses (else redis-py keeps it)
        self._timeout: float | None = conn.socket_timeout if self._replies is not None else None
        self._since = 0.0  # loop time of the last bytes received, or of leaving idle
        self._timer: asyncio.TimerHandle | None = None
        self._idle: asyncio.Future[None] | None = None  # the reader task waits here for work
        self._reader: asyncio.Task[None] | None = None
        if self._replies is not None:
            self._transport.set_protocol(_LinkProtocol(self, self._transport.get_protocol()))
        else:
            self._reader = loop.create_task(self._read_replies())

    def usable(self) -> bool:
        """Still healthy, and on the running loop. A link that parses its own replies learns
        of a close by the server from its protocol; one read through redis-py checks, when
        idle, for EOF or unexpected bytes on its stream reader."""
        if self.error is not None or self._transport.is_closing():
            return False
        if self._reader is not None and not self._waiting:
            stream = self.conn._reader
            if stream is None or stream.at_eof() or stream._buffer:
                return False
        return self.loop is asyncio.get_running_loop()

    def submit(self, packed: bytes) -> asyncio.Future[Any]:
        """Send one command: at once when none is in flight, else with the others issued in
        this step of the loop, in one write."""
        future = self.loop.create_future()
        if not self._waiting:  # nothing in flight: no batch to join, write at once
            self._waiting.append(future)
            if self._timeout is not None:
                self._since = self.loop.time()
                if self._timer is None:
                    self._timer = self.loop.call_at(self._since + self._timeout, self._expire)
            self._write([packed])
        else:
            self._waiting.append(future)
            self._queued.append(packed)
            if self._flush_handle is None:
                self._flush_handle = self.loop.call_soon(self._flush)
        idle = self._idle
        if idle is not None:
            self._idle = None
            if not idle.done():
                idle.set_result(None)
        return future

    def _flush(self) -> None:
        self._flush_handle = None
        queued, self._queued = self._queued, []
        if queued:
            self._write(queued)

    def _write(self, batch: list[bytes]) -> None:
        if self.error is not None:
            return
        if self._transport.is_closing():
            # A read or write error closed the transport earlier in this step of the loop
            # (its connection_lost comes in the next). Never write then: on Python 3.12 and
            # 3.13 (seen on 3.12.1 and 3.13.0; CPython gh-136234), writelines on a lost
            # connection registers a writer for the socket about to close, and the loop
            # keeps it after the close: the next socket given that descriptor (a connect of
            # any client on this loop) is never reported writable and hangs until its own
            # timeout.
            self._fail(RedisConnectionError("Error while writing to socket: connection lost."))
            return
        try:
            self._writer.writelines(batch)
        except Exception as exc:  # the transport is gone; its reader sees the same
            self._fail(RedisConnectionError(f"Error while writing to socket. {exc}."))

    def _expire(self) -> None:
        """The timer of socket_timeout: fail the link when commands have waited that long
        with no byte received, else wait for the rest of the period."""
        self._timer = None
        if self.error is not None or not self._waiting or self._timeout is None:
            return
        due = self._since + self._timeout
        if self.loop.time() < due:
            self._timer = self.loop.call_at(due, self._expire)
            return
        self._fail(self._link_error(RedisTimeoutError(f"no reply in {self._timeout:g}s")))

    def _deliver(self, data: bytes) -> None:
        """Parse what the socket delivered; hand each complete reply to its caller."""
        self._since = self.loop.time()
        replies, waiting = self._replies, self._waiting
        replies.feed(data)
        try:
            while (reply := replies.gets()) is not _MORE:
                if _PUSH is not None and isinstance(reply, _PUSH):
                    continue  # RESP3 push data (no caller waits for it)
                if isinstance(reply, Exception):  # an error reply, parsed by redis-py's rules
                    if isinstance(reply, _LINK_ERRORS):
                        self._fail(reply)
                        return
                    if waiting and not (future := waiting.popleft()).done():
                        future.set_exception(reply)
                elif waiting and not (future := waiting.popleft()).done():
                    future.set_result(reply)
        except Exception as exc:  # a protocol error: nothing after it can be matched
            self._fail(RedisConnectionError(f"Error while reading from socket: {exc!r}"))

    async def _read_replies(self) -> None:
        conn, waiting = self.conn, self._waiting
        try:
            while True:
                if not waiting:
                    self._idle = self.loop.create_future()
                    await self._idle
                    continue
                try:
                    reply = await conn.read_response()
                except _LINK_ERRORS as exc:
                    self._fail(exc)
                    return
                except ResponseError as exc:  # an error reply: that command's, not the link's
                    if not waiting:
                        continue
                    future = waiting.popleft()
                    if not future.done():
                        future.set_exception(exc)
                    continue
                if not waiting:
                    continue
                future = waiting.popleft()
                if not future.done():
                    future.set_result(reply)
        except asyncio.CancelledError:
            self._fail(RedisConnectionError("Connection closed by the store."))
            raise
        except Exception as exc:
            self._fail(self._link_error(exc))

    def _link_error(self, exc: Exception) -> Exception:
        if isinstance(exc, RedisTimeoutError | TimeoutError):
            if self._transport.get_write_buffer_size():  # the server took not even the command
                return RedisTimeoutError("Timeout writing to socket")
            return RedisTimeoutError(f"Timeout reading from socket: {exc}")
        if isinstance(exc, RedisConnectionError):
            return exc
        return RedisConnectionError(f"Error while reading from socket: {exc!r}")

    def _fail(self, exc: Exception) -> None:
        """End the link: every command in flight fails with (a copy of) ``exc``."""
        if self.error is None:
            self.error = exc
            self._transport.abort()  # unsent bytes dropped: no half-written command remains
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._reader is not None and self._reader is not _current_task():
                self._reader.cancel()
        waiting, self._waiting = self._waiting, deque()
        self._queued = []
        for future in waiting:
            if not future.done():
                future.set_exception(type(exc)(*exc.args))

    async def aclose(self) -> None:
        if self.error is None:
            reader = self._reader
            self._fail(RedisConnectionError("Connection closed by the store."))
            if reader is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
        # abort() closes the socket in a later step of the loop: wait for it, so the server
        # has seen the close when aclose returns
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._writer.wait_closed(), timeout=1.0)
        with contextlib.suppress(Exception):
            await self.conn.disconnect(nowait=True)


class _LinkProtocol(asyncio.Protocol):
    """The socket's protocol while a link owns it: bytes go to the link's parser; the end of
    the connection also reaches redis-py's stream protocol, which it replaced."""

    def __init__(self, link: _Link, stream: asyncio.BaseProtocol) -> None:
        self._link = link
        self._stream = stream
        self.data_received = link._deliver  # type: ignore[method-assign]

    def eof_received(self) -> bool:
        return False  # the transport closes; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        detail = "Connection closed by server." if exc is None else f"{exc!r}"
        self._link._fail(RedisConnectionError(f"Error while reading from socket: {detail}"))
        self._stream.connection_lost(exc)

    def pause_writing(self) -> None:
        self._stream.pause_writing()

    def resume_writing(self) -> None:
        self._stream.resume_writing()


_MORE = object()  # what the hiredis reader returns until a whole reply is in

# Error replies that end the link rather than one command: the connection's own (LOADING,
# authentication...), and READONLY: the server was demoted to a replica (a failover), so the
# next command must connect anew (through Sentinel, or a name that now points at the new
# master) instead of failing on this connection forever. Every command in flight gets the
# error; the store's retry policy counts both as transient.
_LINK_ERRORS = (RedisConnectionError, ReadOnlyError)


def _reply_reader(conn: Any) -> Any:
    """A hiredis reader set up as redis-py's parser sets up its own (error replies parsed
    into redis-py's exception classes), or None when the connection does not parse with
    hiredis (the link then reads through redis-py)."""
    if hiredis is None or _AsyncHiredisParser is None:
        return None
    parser = getattr(conn, "_parser", None)
    if not isinstance(parser, _AsyncHiredisParser):
        return None
    options: dict[str, Any] = {
        "protocolError": InvalidResponse,
        "replyError": parser.parse_error,
        "notEnoughData": _MORE,
    }
    if conn.encoder.decode_responses:
        options["encoding"] = conn.encoder.encoding
        options["errors"] = conn.encoder.encoding_errors
    return hiredis.Reader(**options)


def _probe(conn: Any) -> str | None:
    """What the link needs of redis-py's private parts and ``conn`` lacks, or None."""
    writer = getattr(conn, "_writer", None)
    transport = getattr(writer, "transport", None)
    if not callable(getattr(writer, "writelines", None)) or transport is None:
        return "the connection's stream writer (_writer) and its transport"
    for name in ("get_protocol", "set_protocol", "is_closing", "abort", "get_write_buffer_size"):
        if not callable(getattr(transport, name, None)):
            return f"transport.{name}"
    try:
        parses = _reply_reader(conn) is not None
    except AttributeError as exc:  # the parser's or encoder's attributes moved
        return f"redis-py's hiredis parser ({exc})"
    if not parses:  # replies read through redis-py: its stream reader
        reader = getattr(conn, "_reader", None)
        if (
            reader is None
            or not hasattr(reader, "_buffer")
            or not callable(getattr(conn, "read_response", None))
        ):
            return "the connection's stream reader (_reader._buffer)"
    elif not callable(getattr(getattr(conn, "_parser", None), "parse_error", None)):
        return "the hiredis parser's parse_error"
    return None


def _redis_version() -> str:
    import redis

    return str(getattr(redis, "__version__", "?"))


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None
