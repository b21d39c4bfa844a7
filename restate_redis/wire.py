"""How a session's commands reach Redis: the hot path of every round trip.

On a single server (a ``redis.asyncio.Redis`` with a connection pool, Sentinel-managed pools
included) a command is packed by hiredis and sent on a pooled connection directly. That skips
the layers redis-py puts around each ``execute_command`` (its own retries, which the store
turns off and replaces with one policy around the whole round trip, its command-name parsing
and observability hooks) and its pure-Python packer, which is slow for the 10 to 20
arguments of an ``EVALSHA``. The connection's own behaviour is unchanged: it connects, checks
health, parses replies and raises errors exactly as under ``execute_command``, and drops
itself on a network error, a timeout or a cancellation mid-command. A write the socket does
not take at once waits for the drain, bounded by ``socket_timeout`` as in redis-py.

On a cluster, or a client bound to one connection (``single_connection_client``), commands go
through redis-py's ``execute_command``, which routes them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

try:  # a dependency (redis[hiredis]), but the library stays correct without it
    import hiredis
except ImportError:  # pragma: no cover
    hiredis = None  # type: ignore[assignment]

Arg = Any  # str, bytes or int: what both packers take
Packer = Callable[[Any, tuple[Arg, ...]], Any]


def _pack_hiredis(conn: Any, command: tuple[Arg, ...]) -> Any:
    return hiredis.pack_command(command)


def _pack_python(conn: Any, command: tuple[Arg, ...]) -> Any:
    return conn.pack_command(*command)


class Wire:
    """Sends commands for the sessions of one store."""

    def __init__(self, client: Any) -> None:
        self.client = client
        pool = getattr(client, "connection_pool", None)
        kwargs = getattr(pool, "connection_kwargs", {})
        self.direct = isinstance(client, Redis) and not client.single_connection_client
        self._pool = pool if self.direct else None
        utf8 = str(kwargs.get("encoding", "utf-8")).lower().replace("-", "") == "utf8"
        self._pack: Packer = _pack_hiredis if hiredis is not None and utf8 else _pack_python

    async def execute(self, *command: Arg, script: AsyncScript | None = None) -> Any:
        """Send one command, return its reply (redis-py's parsed reply, errors raised).

        ``script``: the command is its EVALSHA; on NOSCRIPT (a restarted, flushed or
        failed-over server) the script is loaded and the command sent again.
        """
        pool = self._pool
        if pool is None:
            return await self.client.execute_command(*command)
        conn = await pool.get_connection()
        try:
            await self._send(conn, self._pack(conn, command))
            return await conn.read_response()
        except NoScriptError:
            if script is None:
                raise
        finally:
            await pool.release(conn)
        await self.execute("SCRIPT", "LOAD", script.script)
        return await self.execute(*command)

    @staticmethod
    async def _send(conn: Any, packed: Any) -> None:
        """``conn.send_packed_command``, without its ``wait_for`` (a task per command on
        Python 3.11): the write goes to the transport at once, and only a write the socket
        did not take whole waits for the drain, bounded by ``socket_timeout``."""
        # The connection's StreamWriter (redis-py keeps it in ``_writer``; without it, or
        # when the connection needs its own handling first, its public method does the send).
        writer: Any = getattr(conn, "_writer", None)
        transport = getattr(writer, "transport", None)
        if (
            transport is None
            or transport.is_closing()
            or not conn.is_connected
            or conn.health_check_interval
        ):
            await conn.send_packed_command(packed)
            return
        try:
            writer.writelines([packed] if isinstance(packed, bytes) else packed)
            if transport.get_write_buffer_size():
                async with asyncio.timeout(conn.socket_timeout):
                    await writer.drain()
        except TimeoutError:
            await conn.disconnect(nowait=True)
            raise RedisTimeoutError("Timeout writing to socket") from None
        except OSError as exc:
            await conn.disconnect(nowait=True)
            raise RedisConnectionError(f"Error while writing to socket. {exc}.") from exc
        except BaseException:
            await conn.disconnect(nowait=True)
            raise

    def script(
        self, script: AsyncScript, keys: Sequence[str], args: Sequence[Arg]
    ) -> Awaitable[Any]:
        """EVALSHA ``script`` (loading it first where the server does not know it)."""
        if self._pool is None:
            return script(keys, args)
        return self.execute("EVALSHA", script.sha, len(keys), *keys, *args, script=script)
