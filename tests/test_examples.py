"""The README's quickstart runs as written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import redis

from restate_redis.keyspace import Keyspace

from .servers import Server

ROOT = Path(__file__).resolve().parent.parent


def test_quickstart_runs_against_a_server(server: Server) -> None:
    with redis.Redis(port=server.port) as r:
        r.flushall()
    out = subprocess.run(
        [sys.executable, "examples/quickstart.py", server.url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "state keys: ['items', 'updated']" in out
    assert "workflow: completed alice@example.com" in out
    with redis.Redis(port=server.port) as r:
        assert r.hkeys(Keyspace().object_keys("Cart", "alice").state) == [b"items"]
