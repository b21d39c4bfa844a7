from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from restate_redis import RedisStateStore

from .servers import Server, start_server
from .workload import Workers

FLAVOURS = ["valkey", "redis"]


@pytest.fixture(scope="session", params=FLAVOURS)
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    """A standalone server of each flavour, shared by the tests of a session."""
    srv = start_server(request.param)
    yield srv
    srv.stop()
    shutil.rmtree(srv.dir, ignore_errors=True)


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
