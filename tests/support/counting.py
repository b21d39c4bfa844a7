"""Counts client round trips by command name: each command or pipeline written is one."""

from __future__ import annotations

from restate_redis.tools.bench.meter import CountingConnection as MeteredConnection


class CountingConnection(MeteredConnection):
    """A redis.asyncio connection that logs its round trips, by (first) command name."""

    sent_log: list[str] = []  # noqa: RUF012 - one shared log, reset by the tests

    def sent(self, names: list[str], size: int) -> None:
        CountingConnection.sent_log.extend(names)
        super().sent(names, size)
