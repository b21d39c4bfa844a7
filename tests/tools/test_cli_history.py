"""``restate-redis kv history / restore / undo / get --watch``, run as the real console
script against a store whose workers keep history."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import signal
import subprocess
import threading
from typing import Any

import pytest
import redis

from tests.support.servers import Server
from tests.support.stores import worker_commit
from tests.tools.test_cli import SCRIPT, Cli, cli, ok, one_line_error, state

__all__ = ["cli"]  # the fixture, shared with test_cli.py

pytestmark = pytest.mark.parametrize("server", ["valkey"], indirect=True)


def commit(server: Server, key: str, history: bool = True, **values: Any) -> None:
    """One commit of a worker (a store with history on, by default)."""
    asyncio.run(worker_commit(server.url, "Cart", key, history, **values))


def test_history_table_and_plain(cli: Cli, server: Server, rc: redis.Redis) -> None:
    commit(server, "a", items=["apple"])
    commit(server, "a", items=["apple", "pear"], total=2)
    ok(cli("kv", "set", "Cart", "a", "total", "3"))  # an edit: an entry of origin cli
    lines = ok(cli("kv", "history", "Cart", "a", "--plain")).splitlines()
    rows = [json.loads(line) for line in lines]
    assert [(r["version"], r["origin"]) for r in rows] == [
        (1, "session"),
        (2, "session"),
        (3, "cli"),
    ]
    assert rows[1]["changes"] == {
        "items": {"old": ["apple"], "new": ["apple", "pear"]},
        "total": {"new": 2},  # no "old": the key did not exist
    }
    assert rows[2]["changes"] == {"total": {"old": 2, "new": 3}}
    assert rows[0]["at"].endswith("Z") and rows[0]["commit_id"] is None
    since = [
        json.loads(x)
        for x in ok(cli("kv", "history", "Cart", "a", "--plain", "--since", "1")).splitlines()
    ]
    assert [r["version"] for r in since] == [2, 3]
    recent = ok(cli("kv", "history", "Cart", "a", "--plain", "--since", "1h")).splitlines()
    assert len(recent) == 3
    table = ok(cli("kv", "history", "Cart", "a", COLUMNS="200"))
    assert "history of Cart/a" in table
    assert 'items: ["apple"] -> ["apple", "pear"]' in table
    assert "total: (absent) -> 2" in table
    # an object without history: exit 5
    commit(server, "plain", history=False, n=1)
    line = one_line_error(cli("kv", "history", "Cart", "plain"), 5)
    assert "no history is kept for 'Cart'/'plain'" in line
    # the CLI starts no history of its own on an object that has none
    ok(cli("kv", "set", "Cart", "plain", "n", "2"))
    assert rc.exists("restate:{Cart:plain}:history") == 0


def test_restore_and_undo(cli: Cli, server: Server, rc: redis.Redis) -> None:
    commit(server, "r", n=1)
    commit(server, "r", n=2, note="x")
    commit(server, "r", n=3, note=None)
    assert ok(cli("kv", "restore", "Cart", "r", "--version", "1")).strip() == (
        "restored Cart/r to version 1: version 4"
    )
    assert state(rc, "Cart", "r") == {"n": 1}
    assert "version 5" in ok(cli("kv", "undo", "Cart", "r"))
    assert state(rc, "Cart", "r") == {"n": 3}
    # the state at a later time is the current one: nothing differs, nothing is committed
    assert "version 5" in ok(cli("kv", "restore", "Cart", "r", "--at", "2099-01-01T00:00:00Z"))
    rows = [json.loads(x) for x in ok(cli("kv", "history", "Cart", "r", "--plain")).splitlines()]
    assert [r["origin"] for r in rows] == ["session"] * 3 + ["restore"] * 2
    line = one_line_error(cli("kv", "undo", "Cart", "r", "--expect-version", "2"), 3)
    assert "it is at version 5" in line and "nothing was written" in line
    # beyond what the log keeps: exit 5, saying how far back it goes
    commit(server, "r", history=False, n=9)  # a commit without history breaks the run
    line = one_line_error(cli("kv", "undo", "Cart", "r"), 5)
    assert "does not reach back past its current version 6" in line
    assert state(rc, "Cart", "r") == {"n": 9}


def test_restore_needs_one_target(cli: Cli) -> None:
    proc = cli("kv", "restore", "Cart", "r")
    assert proc.returncode == 2 and "exactly one of --version and --at" in proc.stderr
    proc = cli("kv", "restore", "Cart", "r", "--at", "yesterday-ish")
    assert proc.returncode == 2 and "is not a time" in proc.stderr


def test_get_watch_prints_each_change_until_ctrl_c(server: Server, rc: redis.Redis) -> None:
    commit(server, "w", n=0)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESTATE_REDIS_")}
    env["RESTATE_REDIS_URL"] = server.url
    proc = subprocess.Popen(
        [SCRIPT, "kv", "get", "Cart", "w", "--watch", "--plain"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # the state, read before the watch starts
        assert json.loads(first) == {"n": 0}
        commit(server, "w", n=1)
        commit(server, "w", n=2, other="x")
        lines: queue.Queue[str] = queue.Queue()  # a reader thread: lines may come together
        stdout = proc.stdout
        threading.Thread(target=lambda: [lines.put(x) for x in stdout], daemon=True).start()
        got = [json.loads(lines.get(timeout=30)) for _ in range(2)]
        assert [(g["version"], g["changes"]["n"]) for g in got] == [
            (2, {"old": 0, "new": 1}),
            (3, {"old": 1, "new": 2}),
        ]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        assert "Traceback" not in proc.stderr.read()  # type: ignore[union-attr]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
