"""Counts client round trips by command name: each command or pipeline written is one."""

from __future__ import annotations

from restate_redis.tools.bench.meter import CountingConnection as MeteredConnection
from restate_redis.tools.bench.meter import command_name


class CountingConnection(MeteredConnection):
    """A redis.asyncio connection that logs what it writes, by command name."""

    sent_log: list[str] = []  # noqa: RUF012 - one shared log, reset by the tests

    def sent(self, chunks: list[bytes]) -> None:
        CountingConnection.sent_log.append(command_name(chunks))
        super().sent(chunks)
