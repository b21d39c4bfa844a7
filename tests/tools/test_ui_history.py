"""The web UI's history: the panel of an object's versions, restoring one (after a
confirmation), and the object page following the object's commits live (Server-Sent Events
from ``store.watch``). ``restate-redis ui`` runs in a subprocess, driven over HTTP and by
headless Chromium (the fixtures of test_ui.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import msgpack
import pytest
import redis
import redis.asyncio

from restate_redis import History, RedisStateStore
from restate_redis.history import HistoryEntry
from tests.support.keys import read_state
from tests.support.servers import Server
from tests.support.stores import worker_commit
from tests.tools.test_ui import UI, browser, object_url, page, run_async, ui

__all__ = ["browser", "page", "ui"]  # the fixtures, shared with test_ui.py

pytestmark = pytest.mark.parametrize("server", ["valkey"], indirect=True)

HEADERS = {"content-type": "application/json", "x-requested-by": "restate-redis"}


def commit(server: Server, key: str, history: History | None = None, **values: Any) -> int:
    """One commit of a worker whose store keeps history; a value None clears the key.
    Returns the version it made."""

    return run_async(lambda: worker_commit(server.url, "Cart", key, history or True, **values))


def stored(server: Server, key: str) -> dict[str, Any]:
    """The state of Cart/``key`` as Redis holds it (without the bookkeeping), decoded."""

    async def read() -> dict[Any, Any]:
        client = redis.asyncio.Redis.from_url(server.url)
        try:
            return await read_state(client, f"restate:{{Cart:{key}}}:state")
        finally:
            await client.aclose()

    return {k.decode(): msgpack.unpackb(v, raw=False) for k, v in run_async(read).items()}


def entries(server: Server, key: str) -> list[HistoryEntry]:
    async def read() -> list[HistoryEntry]:
        async with RedisStateStore.from_url(server.url) as store:
            return await store.history("Cart", key)

    return run_async(read)


def blocked_watches(rc: redis.Redis) -> int:
    """Clients blocked in an XREAD on the server: the UI's open watches."""
    return sum(1 for c in rc.client_list() if c["cmd"] == "xread" and "b" in c["flags"])


def eventually(check: Callable[[], bool], what: str) -> None:
    """Wait (bounded) until ``check()`` holds: for what another process does in its time."""
    deadline = time.monotonic() + 20
    while not check():
        assert time.monotonic() < deadline, f"still not so after 20 s: {what}"
        time.sleep(0.05)


# -- HTTP ---------------------------------------------------------------------------------------


def test_the_event_stream_sends_each_commit_and_ends_with_its_client(
    ui: UI, rc: redis.Redis, server: Server
) -> None:
    commit(server, "sse", items=["apple"])
    eventually(lambda: blocked_watches(rc) == 0, "no watch left from an earlier test")
    params = {"service": "Cart", "key": "sse", "since": "1"}
    with httpx.stream("GET", ui.base + "/api/watch", params=params, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.iter_lines()
        assert next(lines) == "retry: 2000"
        commit(server, "sse", items=["apple", "pear"], total=2)  # another process commits
        event: dict[str, str] = {}
        for line in lines:
            if line == "":
                if event.get("event") == "entry":
                    break
                event = {}
                continue
            if not line.startswith(":"):
                name, _, value = line.partition(": ")
                event[name] = value
        assert event["id"] == "2"
        data = json.loads(event["data"])
        assert (data["version"], data["origin"], data["commit_id"]) == (2, "session", None)
        assert data["changes"] == [
            {"name": "items", "old": {"value": ["apple"]}, "new": {"value": ["apple", "pear"]}},
            {"name": "total", "old": {"absent": True}, "new": {"value": 2}},
        ]
        # the stream holds one read blocked in Redis while it waits for the next commit
        eventually(lambda: blocked_watches(rc) == 1, "the stream's read is blocked in Redis")
    # the client went away: the server stops its read (no task, no blocked connection left)
    eventually(lambda: blocked_watches(rc) == 0, "the watch ended with its client")


def test_history_and_restore_over_http(ui: UI, rc: redis.Redis, server: Server) -> None:
    def send(body: dict[str, Any]) -> httpx.Response:
        return httpx.post(
            ui.base + "/api/restore", content=json.dumps(body), headers=HEADERS, timeout=10
        )

    def history(key: str) -> dict[str, Any]:
        answer = httpx.get(
            ui.base + "/api/history", params={"service": "Cart", "key": key}, timeout=10
        )
        assert answer.status_code == 200, answer.text
        result: dict[str, Any] = answer.json()
        return result

    commit(server, "h", history=History(max_entry_bytes=200), note="x" * 300)  # not kept
    commit(server, "h", note="short", n=1)
    commit(server, "h", n=None)
    got = history("h")
    assert (got["kept"], got["version"], got["restorable_from"]) == (True, 3, 1)
    assert [(e["version"], e["restorable"]) for e in got["entries"]] == [
        (3, False),  # the current version
        (2, True),
        (1, True),  # its state can be rebuilt; the commit before it (0) cannot be undone
    ]
    assert got["entries"][0]["changes"] == [
        {"name": "n", "old": {"value": 1}, "new": {"absent": True}}
    ]
    assert got["entries"][2]["values_kept"] is False
    assert got["entries"][2]["changes"] == [
        {"name": "note", "old": {"not_kept": True}, "new": {"not_kept": True}}
    ]

    base = {"service": "Cart", "key": "h", "version": 3}
    unsure = send({**base, "to_version": 2, "confirm": "yes"})
    assert unsure.status_code == 400 and '"confirm": "restore"' in unsure.json()["error"]
    stale = send({**base, "version": 2, "to_version": 2, "confirm": "restore"})
    assert stale.status_code == 409 and stale.json()["code"] == "version_conflict"
    too_far = send({**base, "to_version": 0, "confirm": "restore"})
    assert too_far.status_code == 409 and too_far.json()["code"] == "history_not_kept"
    assert "reaches back to version 1" in too_far.json()["error"]
    ahead = send({**base, "to_version": 9, "confirm": "restore"})
    assert ahead.status_code == 400 and "it is at version 3" in ahead.json()["error"]
    assert stored(server, "h") == {"note": "short"}  # nothing written by the refusals

    done = send({**base, "to_version": 2, "confirm": "restore"})
    assert done.status_code == 200 and done.json() == {"version": 4}
    assert stored(server, "h") == {"note": "short", "n": 1}
    assert [(e.version, e.origin) for e in entries(server, "h")][-1] == (4, "restore")

    commit(server, "none", history=History(services=["Other"]), a=1)  # no history kept
    assert history("none") == {
        "namespace": "restate",
        "service": "Cart",
        "key": "none",
        "version": 1,
        "kept": False,
        "restorable_from": None,
        "entries": [],
    }


# -- the browser ---------------------------------------------------------------------------------


def test_the_object_page_follows_commits_live_and_restores_a_version(
    ui: UI, page: Any, server: Server
) -> None:
    commit(server, "live", items=["apple"], total=1)
    commit(server, "live", items=["apple", "pear"], total=2)
    page.goto(object_url(ui, "Cart", "live"))
    page.wait_for_selector('#history li.entry[data-version="2"]')
    page.evaluate("window.notReloaded = true")

    commit(server, "live", items=["apple", "pear", "fig"], total=3)  # a worker commits
    page.wait_for_selector('#view[data-version="3"]')  # without a reload: Server-Sent Events
    assert page.evaluate("window.notReloaded") is True
    assert "version 3" in page.locator("#info").text_content()
    assert page.locator('#state tr[data-key="total"] pre').text_content() == "3"
    versions = page.locator("#history li.entry").evaluate_all(
        "items => items.map(i => i.dataset.version)"
    )
    assert versions == ["3", "2", "1"]  # newest first
    newest = page.locator('#history li.entry[data-version="3"]')
    assert "current" in newest.locator(".entry-head").text_content()
    assert newest.locator("button.restore").count() == 0
    diff = newest.locator('tr.change[data-key="items"] pre.diff')
    assert diff.locator(".ins").all_text_contents() == ['+   "pear",', '+   "fig"']
    assert diff.locator(".del").all_text_contents() == ['-   "pear"']
    first = page.locator('#history li.entry[data-version="1"]')
    assert "added" in first.locator('tr.change[data-key="total"] td.name').text_content()

    first.locator("button.restore").click()
    assert "state of version 1" in page.locator("#restore-panel").text_content()
    assert stored(server, "live")["total"] == 3  # nothing written before the confirmation
    page.locator("#restore-confirm").click()
    page.wait_for_selector('#view[data-version="4"]')
    assert "Restored version 1 (version 4)" in page.locator("#message").text_content()
    assert stored(server, "live") == {"items": ["apple"], "total": 1}
    last = entries(server, "live")[-1]
    assert (last.version, last.origin) == (4, "restore")
    assert {name: (c.old, c.new) for name, c in last.changes.items()} == {
        "items": (["apple", "pear", "fig"], ["apple"]),
        "total": (3, 1),
    }
    restore_row = page.locator('#history li.entry[data-version="4"] .entry-head')
    assert "restore" in restore_row.text_content()


def test_cancelling_a_restore_changes_nothing(ui: UI, page: Any, server: Server) -> None:
    commit(server, "keep", n=1)
    commit(server, "keep", n=2)
    page.goto(object_url(ui, "Cart", "keep"))
    page.locator('#history li.entry[data-version="1"] button.restore').click()
    page.locator("#restore-cancel").click()
    assert page.locator("#restore-panel").count() == 0
    assert "nothing was written" in page.locator("#message").text_content()
    assert stored(server, "keep") == {"n": 2}
    assert [e.version for e in entries(server, "keep")] == [1, 2]
    assert page.locator("#view").get_attribute("data-version") == "2"


def test_an_object_without_history_says_so(ui: UI, page: Any, server: Server) -> None:
    commit(server, "plain", history=History(services=["Other"]), n=1)
    page.goto(object_url(ui, "Cart", "plain"))
    page.wait_for_selector("#no-history")
    assert "No history is kept for this object" in page.locator("#no-history").text_content()
    assert page.locator("#message").is_hidden()  # no error
