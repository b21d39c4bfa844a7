"""``restate-redis demo`` end to end through the console script, and its lost-update check."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from restate_redis import RedisStateStore
from restate_redis.keyspace import commit_tag
from restate_redis.tools.demo.examples import cart, fulfilment
from restate_redis.tools.demo.restate import RESTATE_VERSION
from restate_redis.tools.demo.run import WorkerReport, check, make_plan
from tests.support.clirun import console_script, run_cli
from tests.support.keys import meta_of
from tests.support.restate_server import restate_binaries
from tests.support.servers import Server


def _leftover_dirs() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("restate-redis-valkey-*"))


def test_demo_on_the_embedded_server() -> None:
    before = _leftover_dirs()
    done = run_cli("demo", "--workers", "2", "--invocations", "240", "--objects", "3")
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "Check passed" in out
    assert "240 invocations in" in out and "p99 ms" in out
    url = re.search(r"Embedded Valkey server on (redis://127\.0\.0\.1:(\d+)/0)", out)
    assert url is not None, out
    # It says what ran: no Restate server, and where the real one is.
    assert "No Restate server in this mode: 2 worker process(es) call the handlers" in out
    assert "restate-redis demo --restate runs them under a real restate-server" in out
    # The server is gone afterwards: no commands pointing at it, but how to keep it up.
    assert "restate-redis kv get" not in out and "restate-redis ui" not in out, out
    assert "The embedded Valkey server stops now, and the state with it." in out
    assert re.search(r"\n  restate-redis demo --ui +keeps the server and the UI up", out), out
    assert "  restate-redis demo --url redis://127.0.0.1:6379/0   runs against your own" in out
    # Stopped at exit, and nothing left on disk.
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", int(url[2]))) != 0
    assert _leftover_dirs() <= before


async def test_demo_with_url_leaves_exactly_what_the_invocations_imply(server: Server) -> None:
    invocations, objects, seed = 300, 4, 7
    done = run_cli(
        "demo", "--url", server.url, "--workers", "3", "--concurrency", "8",
        "--invocations", str(invocations), "--objects", str(objects), "--seed", str(seed),
        "--retention", "600",
    )  # fmt: skip
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "Check passed" in out and f"Using Redis at {server.url}" in out
    run_id = re.search(r"Run ([0-9a-f]{6}):", out)
    assert run_id is not None, out
    hint = re.search(rf"restate-redis kv get Cart (cart-\S+) --url {re.escape(server.url)}\n", out)
    assert hint is not None, out

    # Read Redis directly and compare with the plan (not with the workers' own reports).
    exclusive = await _assert_redis_holds_the_plan(
        server.url, make_plan(run_id[1], invocations, objects, seed), retention_ms=600_000
    )

    # The hint the demo printed works: the kv CLI shows that cart's state.
    shown = run_cli("kv", "get", "Cart", hint[1], "--url", server.url, "--plain", timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["ops"] == exclusive[hint[1]]


async def _assert_redis_holds_the_plan(
    url: str, plan: list[tuple[str, str, str, int]], retention_ms: int
) -> Counter[str]:
    """Every cart's ops is its number of exclusive invocations in the plan, and every order
    it checked out is a completed workflow with its retention; returns those numbers."""
    exclusive = Counter(key for handler, key, _, _ in plan if handler != "view")
    client = aioredis.Redis.from_url(url)
    store = RedisStateStore(client)
    try:
        orders: list[str] = []
        for key, count in exclusive.items():
            async with store.object(cart.SERVICE, key, shared=True) as ctx:
                assert await ctx.get("ops") == count, key
                orders += await ctx.get("orders") or []
                items = await ctx.get("items") or {}
            assert all(isinstance(q, int) and q > 0 for q in items.values()), items
        checkouts = sum(1 for handler, _, _, _ in plan if handler == "checkout")
        assert 0 < len(orders) <= checkouts
        for order_id in orders:
            state = await fulfilment.status(store, order_id)
            assert state["status"] == "shipped" and state["workflow"] == "completed"
            assert state["steps"] == list(fulfilment.STEPS) and state["items"]
            ttl = await client.pttl(store.keyspace.object_keys(fulfilment.SERVICE, order_id).state)
            assert 0 < ttl <= retention_ms
    finally:
        await client.aclose()
    return exclusive


async def test_check_reports_a_lost_update(store: RedisStateStore) -> None:
    await cart.add_item(store, "c1", "apple", 2)
    await cart.add_item(store, "c1", "apple", 1)
    order = await cart.checkout(store, "c1", retention=60)
    await cart.add_item(store, "c1", "bread", 1)
    assert order.order_id is not None and order.items == {"apple": 3}

    honest = WorkerReport()
    honest.exclusive["c1"] = 4
    honest.added.update({("c1", "apple"): 3, ("c1", "bread"): 1})
    honest.orders[order.order_id] = ("c1", order.items)
    assert await check(store, ["c1"], honest) == ([], 1)

    # Four invocations claimed, one more than Redis holds: that is a lost update.
    lost = WorkerReport()
    lost.exclusive["c1"] = 5
    lost.added.update({("c1", "apple"): 3, ("c1", "bread"): 2})
    lost.orders[order.order_id] = ("c1", order.items)
    problems, _ = await check(store, ["c1"], lost)
    assert any("lost updates: 1" in p for p in problems), problems
    assert any("items are {'bread': 1}" in p for p in problems), problems


def test_demo_ui_keeps_the_server_up_until_ctrl_c() -> None:
    before = _leftover_dirs()
    proc = subprocess.Popen(
        [console_script(), "demo", "--ui", "--workers", "1", "--invocations", "40"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while not any("Starting the UI" in line for line in lines):
            assert proc.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "".join(lines)
            time.sleep(0.05)
        out = "".join(lines)
        assert "Check passed" in out
        url = re.search(r"Embedded Valkey server on (redis://127\.0\.0\.1:\d+/0)", out)
        assert url is not None, out
        # The server is still up, so the commands to look at its state are printed.
        assert "Look at the state:" in out and "stops now" not in out, out
        assert re.search(rf"restate-redis kv get Cart cart-\S+ --url {re.escape(url[1])}\n", out)
        with redis.Redis.from_url(url[1], socket_timeout=5) as r:
            assert r.ping()  # kept up after the run
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert proc.wait(timeout=30) == 0, "".join(lines)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(timeout=5)
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", int(url[1].rsplit(":", 1)[1].split("/")[0]))) != 0
    assert _leftover_dirs() <= before


# -- demo --restate ----------------------------------------------------------------------------

RESTATE_LINE = re.compile(
    r"Restate server: (\S+) \(ingress http://127\.0\.0\.1:(\d+), "
    r"admin http://127\.0\.0\.1:(\d+)\), its data and logs in (\S+) \(removed at the end\)"
)
HANDLERS_LINE = re.compile(
    r"Handlers: the restate-sdk services of restate_redis\.tools\.demo\.examples\.sdk, "
    r"state kept in Redis by @store\.restate_state\(\), served by hypercorn with (\d+) "
    r"worker process\(es\) on http://127\.0\.0\.1:(\d+), registered with the server"
)


def _closed(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _processes_using(path: str) -> list[str]:
    """Running processes whose command line, working directory or open files name ``path``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            cwd = os.readlink(f"/proc/{pid}/cwd")
            fds = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue
        if any(path in text for text in (cmdline, cwd, *fds)):
            found.append(f"{pid}: {cmdline}")
    return found


def _assert_stack_gone(out: str) -> None:
    """Every port the Restate stack listened on is closed, its folder removed and no process
    of it left running."""
    restate, handlers = RESTATE_LINE.search(out), HANDLERS_LINE.search(out)
    assert restate is not None and handlers is not None, out
    for port in (restate[2], restate[3], handlers[2]):
        assert _closed(int(port)), port
    assert not Path(restate[4]).exists()
    assert _processes_using(restate[4]) == []


INVOCATION_ID = re.compile(r"inv_[0-9A-Za-z]+")


async def _watch_invocation_ids(url: str, seen: set[str], watching: asyncio.Event) -> None:
    """Collect every Restate invocation id in the commands the server receives (MONITOR),
    until cancelled; ``watching`` is set once MONITOR is on."""
    client = aioredis.Redis.from_url(url)
    try:
        async with client.monitor() as monitor:
            watching.set()
            while True:
                command = await monitor.next_command()
                seen.update(INVOCATION_ID.findall(command["command"]))
    finally:
        await client.aclose()


async def test_demo_restate_runs_the_services_under_a_real_restate_server(server: Server) -> None:
    restate_binaries()  # installed from npm where missing (a failure in CI when impossible)
    invocations, objects, seed = 240, 3, 11
    invocation_ids: set[str] = set()
    watching = asyncio.Event()
    watcher = asyncio.create_task(_watch_invocation_ids(server.url, invocation_ids, watching))
    await asyncio.wait_for(watching.wait(), 30)
    try:
        done = await asyncio.to_thread(
            run_cli,
            "demo", "--restate", "--url", server.url, "--workers", "2", "--concurrency", "6",
            "--invocations", str(invocations), "--objects", str(objects), "--seed", str(seed),
            "--retention", "600", timeout=240,
        )  # fmt: skip
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "Check passed" in out and f"{invocations} invocations in" in out and "p99 ms" in out
    assert "No Restate server" not in out
    restate, handlers = RESTATE_LINE.search(out), HANDLERS_LINE.search(out)
    assert restate is not None and handlers is not None, out
    assert Path(restate[1]).name == "restate-server" and handlers[1] == "2"
    assert "Every invocation goes through the ingress" in out
    run_id = re.search(r"Run ([0-9a-f]{6}):", out)
    assert run_id is not None, out

    exclusive = await _assert_redis_holds_the_plan(
        server.url, make_plan(run_id[1], invocations, objects, seed), retention_ms=600_000
    )
    # Each cart's last commit carries a Restate invocation id: it ran as a restate-sdk handler.
    # The bookkeeping keeps a hash of the id (its tag): one of the ids the handlers sent.
    tags = {commit_tag(i) for i in invocation_ids}
    assert len(invocation_ids) >= sum(exclusive.values())  # each exclusive handler sends its id
    async with RedisStateStore.from_url(server.url) as store:
        for key in exclusive:
            state = store.keyspace.object_keys(cart.SERVICE, key).state
            assert meta_of(await store.client.hgetall(state)).commit in tags, key
    # Redis is the user's, so it is still up: the commands to look at the state are printed.
    assert re.search(rf"restate-redis kv get Cart cart-\S+ --url {re.escape(server.url)}\n", out)
    _assert_stack_gone(out)


def test_demo_restate_stops_everything_on_ctrl_c() -> None:
    restate_binaries()
    before = _leftover_dirs()
    proc = subprocess.Popen(
        [console_script(), "demo", "--restate", "--workers", "1", "--invocations", "50000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while not any("Every invocation goes through the ingress" in line for line in lines):
            assert proc.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "".join(lines)
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert proc.wait(timeout=60) != 0, "".join(lines)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(timeout=5)
    out = "".join(lines)
    assert "Check passed" not in out
    _assert_stack_gone(out)
    url = re.search(r"Embedded Valkey server on redis://127\.0\.0\.1:(\d+)/0", out)
    assert url is not None, out
    assert _closed(int(url[1]))
    assert _leftover_dirs() <= before


def _fake_npm(tmp_path: Path, exit_code: int) -> tuple[Path, Path]:
    """A bin folder whose ``npm`` records its arguments and fails (no network in tests)."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "npm-calls.txt"
    bin_dir.mkdir()
    npm = bin_dir / "npm"
    npm.write_text(
        f"#!/bin/sh\necho \"$@\" >> {calls}\necho 'npm ERR! 404 no such package' >&2\n"
        f"exit {exit_code}\n"
    )
    npm.chmod(0o755)
    return bin_dir, calls


def test_demo_restate_without_a_terminal_says_how_to_install(tmp_path: Path) -> None:
    bin_dir, calls = _fake_npm(tmp_path, 1)
    cache = tmp_path / "npm-cache"
    env = {
        **os.environ,
        "PATH": os.pathsep.join([str(Path(console_script()).parent), str(bin_dir)]),
        "RESTATE_REDIS_NPM_CACHE": str(cache),
    }
    done = subprocess.run(
        [console_script(), "demo", "--restate", "--invocations", "10"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr == (
        f"Error: restate-server is not on PATH nor in {cache}: install it with `npm install "
        f"--prefix {cache} --no-audit --no-fund --loglevel=error "
        f"@restatedev/restate-server@{RESTATE_VERSION}`, or pass --yes to let the demo "
        "install it\n"
    )
    assert "Embedded Valkey server" not in done.stdout  # nothing was started
    assert not cache.exists() and not calls.exists()


def test_demo_restate_asks_before_installing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from restate_redis.tools.demo import restate as demo_restate
    from restate_redis.tools.demo.command import demo_command

    bin_dir, calls = _fake_npm(tmp_path, 1)
    cache = tmp_path / "npm-cache"
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("RESTATE_REDIS_NPM_CACHE", str(cache))
    monkeypatch.setattr(demo_restate, "_interactive", lambda: True)
    sigterm = signal.getsignal(signal.SIGTERM)  # the command makes SIGTERM exit cleanly
    try:
        declined = CliRunner().invoke(demo_command, ["--restate"], input="n\n")
        assert declined.exit_code == 1, declined.output
        assert (
            f"restate-server was not found. Install @restatedev/restate-server@{RESTATE_VERSION} "
            f"into {cache}? [Y/n]: n" in declined.output
        )
        assert "Error: restate-server is not installed; to install it: npm install" in (
            declined.output
        )
        assert not cache.exists() and not calls.exists()

        # Accepted: npm installs into the cache; its failure is a one-line error.
        accepted = CliRunner().invoke(demo_command, ["--restate"], input="y\n")
        assert accepted.exit_code == 1, accepted.output
        assert calls.read_text().split() == [
            "install", "--prefix", str(cache), "--no-audit", "--no-fund", "--loglevel=error",
            f"@restatedev/restate-server@{RESTATE_VERSION}",
        ]  # fmt: skip
        assert "failed (exit 1" in accepted.output
        assert accepted.output.rstrip().endswith("npm ERR! 404 no such package")

        # --yes: no question.
        calls.unlink()
        yes = CliRunner().invoke(demo_command, ["--restate", "--yes"], input="")
        assert yes.exit_code == 1 and "[Y/n]" not in yes.output, yes.output
        assert calls.exists()
    finally:
        signal.signal(signal.SIGTERM, sigterm)
