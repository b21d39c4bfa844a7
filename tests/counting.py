"""Counts client round trips: each command or pipeline written to a connection is one."""

from __future__ import annotations

from typing import Any

from redis.asyncio.connection import Connection


class CountingConnection(Connection):
    """A redis.asyncio connection that counts what it sends, by command name."""

    sent: list[str] = []  # noqa: RUF012 - one shared log, reset by the tests

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sent.append(_name(command))
        await super().send_packed_command(command, check_health)


def _name(packed: Any) -> str:
    chunk = packed if isinstance(packed, bytes | bytearray) else b"".join(packed[:2])
    # *N\r\n$len\r\nNAME\r\n...
    parts = bytes(chunk).split(b"\r\n")
    return parts[2].decode(errors="replace").upper() if len(parts) > 2 else "?"
