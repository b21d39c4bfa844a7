"""``restate-redis demo`` end to end through the console script, and its lost-update check."""

from __future__ import annotations

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

import redis
import redis.asyncio as aioredis

from restate_redis import RedisStateStore
from restate_redis.demo import WorkerReport, check, make_plan
from restate_redis.examples import cart, fulfilment

from .clirun import console_script, run_cli
from .servers import Server


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
    assert re.search(rf"restate-redis kv get Cart cart-\S+ --url {re.escape(url[1])}\n", out)
    assert f"restate-redis ui --url {url[1]}" in out
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
    plan = make_plan(run_id[1], invocations, objects, seed)
    exclusive = Counter(key for handler, key, _, _ in plan if handler != "view")
    client = aioredis.Redis.from_url(server.url)
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
            assert 0 < ttl <= 600_000
    finally:
        await client.aclose()

    # The hint the demo printed works: the kv CLI shows that cart's state.
    shown = run_cli("kv", "get", "Cart", hint[1], "--url", server.url, "--plain", timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["ops"] == exclusive[hint[1]]


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
