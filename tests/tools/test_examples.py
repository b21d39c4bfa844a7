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


def _tables(out: str) -> list[list[list[str]]]:
    """The Markdown tables of the script's output, each as its rows of cells (header first)."""
    tables: list[list[list[str]]] = []
    previous = ""
    for line in out.splitlines():
        if line.startswith("| ") and "---" not in line:
            if not previous.startswith("|"):
                tables.append([])
            tables[-1].append([cell.strip() for cell in line.strip("|").split("|")])
        previous = line
    return tables


def test_latency_script_measures_every_backend_with_the_stack_it_starts() -> None:
    """A short run of ``python -m examples.latency``: its own Redis, Restate and example
    deployment, every backend called, the CPU of each process counted, the large-state
    objects built through invocations and read back by every variant, all stopped after."""
    restate_binaries()  # (installs Restate from npm where it is missing)
    options = ["--calls", "24", "--concurrency", "3", "--rounds", "2", "--warmup", "3"]
    options += ["--runs", "2", "--big-calls", "4", "--big-keys", "20"]
    out = subprocess.run(
        [sys.executable, "-m", "examples.latency", *options],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    small, big = _tables(out)
    header, *rows = small
    assert header[-3:] == ["worker CPU ms/call", "Restate CPU ms/call", "Redis CPU ms/call"]
    backends = ["native", "native+2 pings", "redis"]
    assert [(r[0], r[1]) for r in rows] == [(c, b) for c in ("1", "3") for b in backends]
    for row in rows:  # two runs together
        assert int(row[2]) >= 36 and float(row[3]) > 0 and row[6].endswith("x"), row
    # the worker's and Restate's process ids were found: their CPU time is counted (Redis's,
    # about 0.1 ms per call, can stay under the kernel's 10 ms tick in so short a run)
    assert sum(float(r[-3]) for r in rows) > 0, out
    assert sum(float(r[-2]) for r in rows) > 0, out
    header, *rows = big
    assert header[6] == "p50 vs native eager"
    variants = ["native eager", "native lazy", "redis eager", "redis lazy"]
    assert [r[1] for r in rows] == variants
    assert rows[0][6] == "1.00x" and all(int(r[2]) == 4 and float(r[3]) > 0 for r in rows)
    # every call of every variant read the middle key's 1 KiB value (the script checks each)
    assert 'values read: every large-state call read "k0010:1024"' in out
    assert "small state, 1 client(s): p50 redis / native, median of 2 run(s): " in out
    assert "large state, 20 x 1 KiB: p50 redis eager / native eager: " in out
    assert "large state, 20 x 1 KiB: p50 redis lazy / native lazy: " in out


def test_hypercorn_config_lifts_the_request_limit_per_connection() -> None:
    """hypercorn reads examples/hypercorn.toml (the worker commands of deploy/ and the README
    pass it) as lifting its 1,000-requests-per-connection default; a misspelt key would be
    ignored silently."""
    from hypercorn.config import Config

    default = Config().keep_alive_max_requests
    assert Config.from_toml(ROOT / "examples" / "hypercorn.toml").keep_alive_max_requests >= (
        default * 1_000_000
    )
