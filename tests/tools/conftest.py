"""Fixtures of the tools' tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tests.support.servers import Server


@pytest.fixture
def rc(server: Server) -> Iterator[redis.Redis]:
    """A sync client on an empty database."""
    c = redis.Redis.from_url(server.url)
    c.flushall()
    yield c
    c.close()
