"""The README's quickstart and latency script run as written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import redis

from restate_redis.keyspace import Keyspace
from tests.support.keys import state_names
from tests.support.restate_server import restate_binaries
from tests.support.servers import Server

ROOT = Path(__file__).resolve().parents[2]


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
        names = r.hkeys(Keyspace().object_keys("Cart", "alice").state)
        assert state_names(names) == {b"items"}


def test_latency_script_measures_every_backend_with_the_stack_it_starts() -> None:
    """A short run of ``python -m examples.latency``: its own Redis, Restate and example
    deployment, every backend called, the CPU of each process counted, all stopped after."""
    restate_binaries()  # (installs Restate from npm where it is missing)
    options = ["--calls", "24", "--concurrency", "3", "--rounds", "2", "--warmup", "3"]
    out = subprocess.run(
        [sys.executable, "-m", "examples.latency", *options],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    lines = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    header, *rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    assert header[-3:] == ["worker CPU ms/call", "Restate CPU ms/call", "Redis CPU ms/call"]
    backends = ["native", "native+2 pings", "redis"]
    assert [(r[0], r[1]) for r in rows] == [(c, b) for c in ("1", "3") for b in backends]
    for row in rows:
        assert int(row[2]) >= 18 and float(row[3]) > 0 and row[6].endswith("x"), row
    # the worker's and Restate's process ids were found: their CPU time is counted (Redis's,
    # about 0.1 ms per call, can stay under the kernel's 10 ms tick in so short a run)
    assert sum(float(r[-3]) for r in rows) > 0, out
    assert sum(float(r[-2]) for r in rows) > 0, out


def test_hypercorn_config_lifts_the_request_limit_per_connection() -> None:
    """hypercorn reads examples/hypercorn.toml (the worker commands of deploy/ and the README
    pass it) as lifting its 1,000-requests-per-connection default; a misspelt key would be
    ignored silently."""
    from hypercorn.config import Config

    default = Config().keep_alive_max_requests
    assert Config.from_toml(ROOT / "examples" / "hypercorn.toml").keep_alive_max_requests >= (
        default * 1_000_000
    )
