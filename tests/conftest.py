from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from restate_redis import RedisStateStore
from restate_redis.tools.bench.meter import CountingLoop
from tests.support import leftovers
from tests.support.servers import Server, running_server
from tests.support.workers import Workers

FLAVOURS = ["valkey", "redis"]


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Every async test runs on the bench meter's loop: asyncio's selector loop, which opens
    the socket of a counting connection (tests/support/counting.py) as one that counts, and
    every other connection as usual."""
    return {"selector": CountingLoop}


@pytest.fixture(scope="session", params=FLAVOURS)
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    """A standalone server of each flavour, shared by the tests of a session."""
    with running_server(request.param) as srv:
        yield srv


@pytest.fixture(scope="module")
def redis_server() -> Iterator[Server]:
    """A Redis server of the module's own (for tests that cut, stop or share it with
    processes of their own)."""
    with running_server("redis") as srv:
        yield srv


@pytest.fixture
async def client(server: Server) -> AsyncIterator[aioredis.Redis]:
    """A redis.asyncio client on an empty database."""
    c = aioredis.Redis.from_url(server.url)
    await c.flushall()
    yield c
    await c.aclose()


@pytest.fixture
async def store(client: aioredis.Redis) -> AsyncIterator[RedisStateStore]:
    s = RedisStateStore(client, lease_ttl=5, acquire_timeout=10)
    yield s
    await s.aclose()


@pytest.fixture
def workers() -> Iterator[Workers]:
    """Worker processes for the scale and fault tests, all stopped at the end."""
    w = Workers()
    yield w
    w.stop()


_temp_before: set[Path] = set()


def pytest_sessionstart(session: pytest.Session) -> None:
    _temp_before.update(leftovers.snapshot())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run when it left folders or files in the system temp folder (after every
    fixture was torn down)."""
    left = leftovers.new_since(_temp_before)
    if not left:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = [
        f"the test run left {len(left)} entries in the temp folders (remove them; a test "
        "session running at the same time on this machine may have made some of them):"
    ]
    lines += [f"  {path}" for path in left]
    if reporter is not None:
        reporter.write_line("")
        reporter.write_sep("=", "left behind", red=True)
        for line in lines:
            reporter.write_line(line)
    if session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
