"""The web UI end to end: ``restate-redis ui`` in a subprocess, driven by headless Chromium.

Chromium is Debian's package (``/usr/bin/chromium``), driven by Playwright's Python package;
browser downloads are impossible here. Outside CI the browser tests skip when it is missing;
in CI they fail.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import msgpack
import pytest
import redis

from restate_redis import RedisStateStore
from restate_redis.keyspace import META_FIELD
from tests.support.bookkeeping import packed_meta
from tests.support.keys import meta_of, state_fields
from tests.support.servers import Server, free_port, unavailable

T = TypeVar("T")

pytestmark = pytest.mark.parametrize("server", ["valkey"], indirect=True)

SCRIPT = str(Path(sys.executable).with_name("restate-redis"))
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
DOCS = Path(__file__).resolve().parents[2] / "docs"
TOKEN = "t0ken-for-tests"


@dataclass
class UI:
    """One ``restate-redis ui`` process."""

    proc: subprocess.Popen[str]
    base: str

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


def start_ui(server: Server, *args: str, host: str = "127.0.0.1") -> UI:
    port = free_port()
    proc = subprocess.Popen(
        [SCRIPT, "ui", "--url", server.url, "--host", host, "--port", str(port), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    ui = UI(proc, f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(ui.base + "/", timeout=2).status_code == 200:
                return ui
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            ui.stop()
            err = proc.stderr.read() if proc.stderr else ""
            raise RuntimeError(f"the UI did not start: {err}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def ui(server: Server) -> Iterator[UI]:
    started = start_ui(server)
    yield started
    started.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        unavailable(
            f"no Chromium at {CHROMIUM}: apt-get install chromium",
            note="skipping the browser tests",
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("the playwright package is missing: pip install -e '.[dev]'")

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    # bypass_csp: the page must render data as text by itself, not only thanks to its CSP
    # (and Playwright's evaluate needs it)
    context = browser.new_context(viewport={"width": 1100, "height": 700}, bypass_csp=True)
    tab = context.new_page()
    tab.set_default_timeout(15_000)
    dialogs: list[str] = []

    def dismiss(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    tab.on("dialog", dismiss)
    yield tab
    context.close()
    assert dialogs == [], f"the page opened dialogs: {dialogs}"


def run_async(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion in its own thread: Playwright's sync API keeps an event
    loop running in this one."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result(timeout=60)


def seed(server: Server, service: str, key: str, **values: object) -> int:
    """Write like a handler does; returns the object's new version."""

    async def write() -> int:
        async with RedisStateStore.from_url(server.url) as store:
            async with store.object(service, key) as s:
                for name, value in values.items():
                    s.set(name, value)
            return s.version

    return run_async(write)


def state(rc: redis.Redis, service: str, key: str) -> dict[str, Any]:
    raw: dict[bytes, bytes] = rc.hgetall(f"restate:{{{service}:{key}}}:state")  # type: ignore[assignment]
    return {k.decode(): msgpack.unpackb(v, raw=False) for k, v in state_fields(raw).items()}


def object_url(ui: UI, service: str, key: str) -> str:
    return f"{ui.base}/#/s/{service}/o/{key}"


def edit(page: Any, name: str, value: str) -> None:
    row = page.locator(f'tr[data-key="{name}"]')
    row.locator("button.edit").click()
    row.locator("textarea.editor").fill(value)
    row.locator("button.save").click()


# -- browser tests ------------------------------------------------------------------------------


def test_browse_to_an_object_edit_a_value_and_screenshot(
    ui: UI, page: Any, rc: redis.Redis, server: Server
) -> None:
    seed(server, "Cart", "bob", items=[])
    seed(
        server,
        "Cart",
        "alice",
        items=[{"sku": "tea-42", "qty": 2}, {"sku": "mug-7", "qty": 1}],
        count=1,
        customer={"name": "Alice", "tier": "gold"},
        note="<b>gift wrap</b>",
    )
    seed(server, "Counter", "visits", n=17)
    page.goto(ui.base + "/")
    page.locator("#services a.service", has_text="Cart").click()
    page.locator("#objects a.object", has_text="alice").click()
    page.wait_for_selector('tr[data-key="count"]')
    assert page.locator("#title").text_content() == "Cart / alice"
    assert "version 1" in page.locator("#info").text_content()
    assert page.locator("#namespace").text_content() == "namespace restate"
    edit(page, "count", "2")
    page.wait_for_selector("#message.ok")
    assert "Saved count (version 2)" in page.locator("#message").text_content()
    assert state(rc, "Cart", "alice")["count"] == 2
    page.wait_for_selector('#view[data-version="2"]')
    assert page.locator('tr[data-key="count"] pre').text_content() == "2"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ui-object.png"), full_page=True)
    if os.environ.get("UPDATE_DOCS_SCREENSHOT"):  # refresh the README's picture on demand
        DOCS.mkdir(exist_ok=True)
        shutil.copyfile(ARTIFACTS / "ui-object.png", DOCS / "ui.png")
    assert (ARTIFACTS / "ui-object.png").stat().st_size > 10_000


def test_an_edit_racing_a_concurrent_write_shows_the_conflict(
    ui: UI, page: Any, rc: redis.Redis, server: Server
) -> None:
    seed(server, "Cart", "carol", count=1)
    page.goto(object_url(ui, "Cart", "carol"))
    page.wait_for_selector('tr[data-key="count"]')
    seed(server, "Cart", "carol", count=100)  # a handler commits while the page is open
    edit(page, "count", "5")
    page.wait_for_selector("#message.error")
    text = page.locator("#message").text_content()
    assert "Conflict" in text and "nothing was written" in text
    assert "version 2, the edit expected version 1" in text
    assert state(rc, "Cart", "carol") == {"count": 100}
    page.locator("#reload-after-conflict").click()
    page.wait_for_selector('#view[data-version="2"]')
    assert page.locator('tr[data-key="count"] pre').text_content() == "100"
    edit(page, "count", "5")
    page.wait_for_selector("#message.ok")
    assert state(rc, "Cart", "carol") == {"count": 5}


def test_html_in_values_and_keys_renders_as_text(
    ui: UI, page: Any, rc: redis.Redis, server: Server
) -> None:
    evil = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
    seed(server, "Cart", "<i>dave</i>", **{"<b>key</b>": evil, "plain": "ok"})
    page.goto(ui.base + "/#/s/Cart")
    page.locator("#objects a.object", has_text="<i>dave</i>").click()
    page.wait_for_selector('tr[data-key="plain"]')
    row = page.locator('tr[data-key="<b>key</b>"]')
    assert row.locator("td.name").text_content() == "<b>key</b>"
    assert row.locator("pre").text_content() == json.dumps(evil)
    assert row.locator("pre").is_visible()
    assert page.evaluate("window.__pwned") is None
    assert page.locator("#view script, #view img, #view b, #view i").count() == 0
    assert page.locator("#title").text_content() == "Cart / <i>dave</i>"


def test_large_values_show_a_preview_and_a_download_link(
    ui: UI, page: Any, rc: redis.Redis, server: Server
) -> None:
    big = "x" * (3 * 1024 * 1024)
    seed(server, "Cart", "erin", big=big, small=1)
    page.goto(object_url(ui, "Cart", "erin"))
    row = page.locator('tr[data-key="big"]')
    row.wait_for()
    assert len(row.locator("pre").text_content()) < 5000
    assert "Preview of a 3.0 MiB value" in row.locator(".truncated").text_content()
    assert row.locator("button.edit").is_disabled()
    href = row.locator("a.download").get_attribute("href")
    downloaded = page.request.get(ui.base + href)
    assert downloaded.ok and json.loads(downloaded.body()) == big
    edit(page, "small", "2")  # the rest of the page still works
    page.wait_for_selector("#message.ok")
    assert state(rc, "Cart", "erin")["small"] == 2
    assert len(state(rc, "Cart", "erin")["big"]) == len(big)


def test_objects_are_paginated_and_searchable_by_prefix(
    ui: UI, page: Any, rc: redis.Redis, server: Server
) -> None:
    names = [f"{'ab' if i % 3 else 'zz'}-{i:03d}" for i in range(150)]

    async def fill() -> None:
        async with RedisStateStore.from_url(server.url) as store:
            for name in names:
                async with store.object("Many", name) as s:
                    s.set("n", 1)

    run_async(fill)
    page.goto(ui.base + "/#/s/Many")
    links = page.locator("#objects a.object")
    info = page.locator("#page-info")
    info.wait_for()
    seen: list[str] = []
    for expected in (
        "1 to 50 of 150 objects",
        "51 to 100 of 150 objects",
        "101 to 150 of 150 objects",
    ):
        page.wait_for_function(
            "text => document.getElementById('page-info')?.textContent === text", arg=expected
        )
        assert links.count() == 50
        seen += links.all_text_contents()
        if page.locator("#next").is_enabled():
            page.locator("#next").click()
    assert page.locator("#next").is_disabled()
    assert seen == sorted(names)  # every object once, in key order
    page.locator("#prev").click()
    page.wait_for_function("document.getElementById('page-info')?.textContent.startsWith('51')")
    page.locator("#prefix").fill("zz-")
    page.locator("#prefix").press("Enter")
    page.wait_for_function(
        "document.getElementById('page-info')?.textContent === '1 to 50 of 50 objects'"
    )
    assert links.all_text_contents() == sorted(n for n in names if n[:3] == "zz-")
    assert page.locator("#next").is_disabled()


def test_add_and_delete_a_key(ui: UI, page: Any, rc: redis.Redis, server: Server) -> None:
    seed(server, "Cart", "kim", a=1, b=2)
    page.goto(object_url(ui, "Cart", "kim"))
    page.wait_for_selector('tr[data-key="a"]')
    page.locator("#add-key").click()
    page.locator("#new-name").fill("c")
    page.locator("#new-value").fill('{"deep": [1, "two"]}')
    page.locator("#add-save").click()
    page.wait_for_selector('tr[data-key="c"]')
    assert state(rc, "Cart", "kim") == {"a": 1, "b": 2, "c": {"deep": [1, "two"]}}
    delete = page.locator('tr[data-key="a"] button.delete')
    delete.click()
    assert delete.text_content() == "Really delete?"
    assert state(rc, "Cart", "kim")["a"] == 1  # one click only arms it
    delete.click()
    page.wait_for_selector('tr[data-key="a"]', state="detached")
    assert state(rc, "Cart", "kim") == {"b": 2, "c": {"deep": [1, "two"]}}


def test_replace_the_whole_state_then_clear_all_with_typed_confirmation(
    ui: UI, page: Any, rc: redis.Redis, server: Server
) -> None:
    seed(server, "Cart", "fay", a=1, b=2)
    page.goto(object_url(ui, "Cart", "fay"))
    page.wait_for_selector('tr[data-key="a"]')
    page.locator("#replace-state").click()
    page.locator("#state-editor").fill('{"a": 10, "c": {"$base64": "AAE="}}')
    page.locator("#replace-save").click()
    page.wait_for_selector("#message.ok")
    assert state(rc, "Cart", "fay") == {"a": 10, "c": b"\x00\x01"}
    page.wait_for_selector('#view[data-version="2"]')
    page.locator("#clear-all").click()
    confirm = page.locator("#clear-all-confirm")
    page.locator("#confirm-clear").fill("delet")
    assert confirm.is_disabled()
    page.locator("#confirm-clear").fill("delete")
    confirm.click()
    page.wait_for_selector("#empty")
    assert state(rc, "Cart", "fay") == {}


def test_workflow_status_and_retention_are_shown(
    ui: UI, page: Any, rc: redis.Redis, server: Server
) -> None:
    async def run() -> None:
        async with (
            RedisStateStore.from_url(server.url) as store,
            store.workflow("Signup", "wf-7") as wf,
        ):
            wf.set("step", "mailed")

    run_async(run)
    page.goto(ui.base + "/#/s/Signup")
    assert "workflow completed" in page.locator("#objects tbody tr").first.text_content()
    page.goto(object_url(ui, "Signup", "wf-7"))
    assert page.locator("#workflow-status").text_content() == "workflow completed"
    assert page.locator("#retention").text_content().startswith(" · state expires in 23h 59m")


def test_the_object_page_shows_the_time_each_expiring_key_has_left(
    ui: UI, page: Any, rc: redis.Redis, server: Server
) -> None:
    async def write() -> None:
        async with RedisStateStore.from_url(server.url) as store:
            async with store.object("Cart", "lea") as s:
                s.set("token", "abc", ttl=timedelta(hours=1))
                s.set("items", [1])
            async with store.object("Cart", "lou") as s:
                s.set("basket", [2])

    run_async(write)
    answer = api_get(ui.base, "/api/state", service="Cart", key="lea")
    assert answer["expiring"] is True
    ttls = {k["name"]: k["ttl_ms"] for k in answer["keys"]}
    assert ttls["items"] is None and 3_590_000 < ttls["token"] <= 3_600_000
    page.goto(object_url(ui, "Cart", "lea"))
    page.wait_for_selector('tr[data-key="token"]')
    assert page.locator("#state th").all_text_contents()[3] == "expires in"
    left = page.locator('tr[data-key="token"] td.expires').text_content()
    assert left.startswith(("59m 5", "1h 0m 0s")), left
    assert page.locator('tr[data-key="items"] td.expires').text_content() == ""
    edit(page, "items", "[1, 2]")  # the rest of the row works as before
    page.wait_for_selector("#message.ok")
    assert state(rc, "Cart", "lea")["items"] == [1, 2]
    # an object without expiring keys has no such column
    page.goto(object_url(ui, "Cart", "lou"))
    page.wait_for_selector('tr[data-key="basket"]')  # (the same page: only its hash changed)
    assert "expires in" not in page.locator("#state th").all_text_contents()
    assert page.locator("td.expires").count() == 0


def test_token_login_in_the_browser(page: Any, rc: redis.Redis, server: Server) -> None:
    seed(server, "Cart", "gus", a=1)
    guarded = start_ui(server, "--token", TOKEN)
    try:
        page.goto(guarded.base + "/")
        page.wait_for_selector("#token-form:not([hidden])")
        assert page.locator("#services").count() == 0
        page.goto(guarded.base + f"/#token={TOKEN}")
        page.locator("#services a.service", has_text="Cart").click()
        page.locator("#objects a.object", has_text="gus").click()
        edit(page, "a", "2")
        page.wait_for_selector("#message.ok")
        assert state(rc, "Cart", "gus") == {"a": 2}
    finally:
        guarded.stop()


# -- the API's protections (plain HTTP) -------------------------------------------------------


def change(base: str, **headers: str) -> httpx.Response:
    body = {"service": "Cart", "key": "hal", "name": "a", "value": 2, "version": None}
    sent = {"content-type": "application/json", "x-requested-by": "restate-redis", **headers}
    sent = {k: v for k, v in sent.items() if v}
    return httpx.put(base + "/api/value", content=json.dumps(body), headers=sent, timeout=10)


def test_cross_site_and_rebinding_requests_are_refused(
    ui: UI, rc: redis.Redis, server: Server
) -> None:
    seed(server, "Cart", "hal", a=1)
    refused = {
        "form post": change(ui.base, **{"content-type": "application/x-www-form-urlencoded"}),
        "no custom header": change(ui.base, **{"x-requested-by": ""}),
        "foreign origin": change(ui.base, origin="https://evil.example"),
        "cross-site fetch": change(ui.base, **{"sec-fetch-site": "cross-site"}),
        "rebound host": change(ui.base, host="evil.example:9071"),
    }
    for what, response in refused.items():
        expected = (415, "unsupported_media_type") if what == "form post" else (403, "forbidden")
        assert (response.status_code, response.json()["code"]) == expected, what
    assert state(rc, "Cart", "hal") == {"a": 1}
    assert change(ui.base, origin=ui.base, **{"sec-fetch-site": "same-origin"}).status_code == 200
    assert state(rc, "Cart", "hal") == {"a": 2}
    page = httpx.get(ui.base + "/", timeout=10)
    assert "script-src 'self'" in page.headers["content-security-policy"]


def test_api_errors_are_clear(ui: UI, rc: redis.Redis, server: Server) -> None:
    seed(server, "Cart", "ivy", a=1)
    headers = {"content-type": "application/json", "x-requested-by": "restate-redis"}

    def send(method: str, path: str, body: Any) -> httpx.Response:
        return httpx.request(
            method, ui.base + path, content=json.dumps(body), headers=headers, timeout=10
        )

    missing = send("PUT", "/api/value", {"service": "Cart", "key": "ivy", "name": "a", "value": 1})
    assert missing.status_code == 400 and "'version' is required" in missing.json()["error"]
    wrong = send("DELETE", "/api/state", {"service": "Cart", "key": "ivy", "version": None})
    assert wrong.status_code == 400 and "'confirm' is required" in wrong.json()["error"]
    unsure = send(
        "DELETE", "/api/state", {"service": "Cart", "key": "ivy", "version": 1, "confirm": "y"}
    )
    assert unsure.status_code == 400 and "delete" in unsure.json()["error"]
    gone = send("DELETE", "/api/value", {"service": "Cart", "key": "x", "name": "a", "version": 0})
    assert gone.status_code == 404 and "does not exist" in gone.json()["error"]
    stale = send("PUT", "/api/state", {"service": "Cart", "key": "ivy", "state": {}, "version": 0})
    assert stale.status_code == 409 and stale.json()["code"] == "version_conflict"
    assert state(rc, "Cart", "ivy") == {"a": 1}
    listing = httpx.get(ui.base + "/api/objects", params={"service": "Cart"}, timeout=10).json()
    changed = listing["objects"][0].pop("changed_ms")
    ivy = meta_of(rc.hgetall("restate:{Cart:ivy}:state"))  # type: ignore[arg-type]
    assert isinstance(changed, int) and changed == ivy.changed_ms
    assert listing == {
        "namespace": "restate",
        "objects": [
            {
                "key": "ivy",
                "kind": "object",
                "workflow_status": None,
                "retention_ms": None,
                "version": 1,
                "size": 2,
                "keys": 1,
                "load": "eager",
            }
        ],
        "cursor": "0",
    }
    for bad, says in (
        ({"sort": "colour"}, "'sort' must be one of key, version, size, keys, changed"),
        ({"order": "up"}, "'order' must be 'asc' or 'desc'"),
        ({"offset": "-1"}, "'offset' must be at least 0"),
        ({"column": [str(i) for i in range(11)]}, "at most 10 state keys"),
    ):
        answer = httpx.get(ui.base + "/api/table", params={"service": "Cart", **bad}, timeout=10)
        assert answer.status_code == 400 and says in answer.json()["error"], answer.json()


def test_token_is_required_off_loopback_and_checked(rc: redis.Redis, server: Server) -> None:
    refused = subprocess.run(
        [SCRIPT, "ui", "--url", server.url, "--host", "0.0.0.0", "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0
    assert "refusing to listen on 0.0.0.0" in refused.stderr and "--token" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    guarded = start_ui(server, "--token", TOKEN)
    try:
        services = guarded.base + "/api/services"
        assert httpx.get(services, timeout=10).status_code == 401
        bad = {"authorization": "Bearer nope-nope-nope"}
        assert httpx.get(services, headers=bad, timeout=10).status_code == 401
        good = {"authorization": f"Bearer {TOKEN}"}
        assert httpx.get(services, headers=good, timeout=10).status_code == 200
        assert httpx.get(services, params={"token": TOKEN}, timeout=10).status_code == 200
        assert change(guarded.base).status_code == 401
        seed(server, "Cart", "jo", a=1)
        assert change(guarded.base, authorization=f"Bearer {TOKEN}").status_code == 200
        assert httpx.get(guarded.base + "/", timeout=10).status_code == 200  # the page is public
    finally:
        guarded.stop()


# -- edits in the page keep what the user did not change ---------------------------------------

# Bytes another encoder wrote, and values a JS number would alter (1.0, 2**60 + 1).
FOREIGN = {
    "f32": msgpack.packb(1.5, use_single_float=True),
    "wide_int": b"\xcd\x00\x05",
    "key_order": msgpack.packb({"b": 1, "a": 2.0}),
    "float_one": msgpack.packb(1.0),
    "big_int": msgpack.packb(2**60 + 1),
    "exp_float": msgpack.packb(1e16),
    "marker_shaped": msgpack.packb({"$base64": "aGk=", "in": [{"$raw": "x"}]}),
    # state keys named like JavaScript object properties
    "__proto__": msgpack.packb({"polluted": True}),
    "constructor": msgpack.packb(1),
    "toString": msgpack.packb("s"),
    "hasOwnProperty": msgpack.packb([1]),
    "valueOf": msgpack.packb(None),
}


def raw(rc: redis.Redis, service: str, key: str) -> dict[str, bytes]:
    got: dict[bytes, bytes] = rc.hgetall(f"restate:{{{service}:{key}}}:state")  # type: ignore[assignment]
    return {k.decode(): v for k, v in state_fields(got).items()}


def seed_foreign(rc: redis.Redis, server: Server, key: str) -> None:
    seed(server, "Foreign", key, n=1)
    rc.hset(f"restate:{{Foreign:{key}}}:state", mapping=FOREIGN)  # type: ignore[arg-type]


def test_replace_whole_state_leaves_unchanged_values_byte_for_byte(
    ui: UI, page: Any, rc: redis.Redis, server: Server
) -> None:
    seed_foreign(rc, server, "whole")
    page.goto(object_url(ui, "Foreign", "whole"))
    page.wait_for_selector('tr[data-key="__proto__"]')
    shown = page.locator('tr[data-key="marker_shaped"] pre').text_content()
    assert json.loads(shown) == {"$$base64": "aGk=", "in": [{"$$raw": "x"}]}
    page.locator("#replace-state").click()
    text = page.locator("#state-editor").input_value()
    assert '"float_one": 1.0' in text and f'"big_int": {2**60 + 1}' in text
    assert '"__proto__": {' in text and '"constructor": 1' in text
    page.locator("#state-editor").fill(text.replace('"n": 1', '"n": 2'))
    page.locator("#replace-save").click()
    page.wait_for_selector("#message.ok")
    assert raw(rc, "Foreign", "whole") == {**FOREIGN, "n": msgpack.packb(2)}


def test_editing_one_value_keeps_its_numbers_as_written(
    ui: UI, page: Any, rc: redis.Redis, server: Server
) -> None:
    seed_foreign(rc, server, "one")
    page.goto(object_url(ui, "Foreign", "one"))
    page.wait_for_selector('tr[data-key="big_int"]')
    for name in ("float_one", "big_int", "exp_float", "key_order", "__proto__"):
        row = page.locator(f'tr[data-key="{name}"]')
        row.locator("button.edit").click()
        row.locator("button.save").click()  # saved as shown
        page.wait_for_selector("#message.ok")
        page.wait_for_selector(f'tr[data-key="{name}"] button.edit')
    assert raw(rc, "Foreign", "one") == {**FOREIGN, "n": msgpack.packb(1)}
    edit(page, "n", "1.0")  # a float now: 1.0 is not 1
    page.wait_for_selector('#view[data-version="2"]')
    edit(page, "n", "12345678901234567891")
    page.wait_for_selector('#view[data-version="3"]')
    assert raw(rc, "Foreign", "one") == {**FOREIGN, "n": msgpack.packb(12345678901234567891)}
    assert page.locator('tr[data-key="n"] pre').text_content() == "12345678901234567891"


@pytest.mark.parametrize("number", ["1e999", "-1e400", "NaN", "Infinity"])
def test_the_page_refuses_numbers_json_cannot_carry(
    ui: UI, page: Any, rc: redis.Redis, server: Server, number: str
) -> None:
    seed(server, "Cart", "nums", a=1)
    page.goto(object_url(ui, "Cart", "nums"))
    page.wait_for_selector('tr[data-key="a"]')
    edit(page, "a", f"[{number}]")
    page.wait_for_selector("#message.error")
    page.locator("#replace-state").click()
    page.locator("#state-editor").fill(f'{{"a": {number}}}')
    page.locator("#replace-save").click()
    page.wait_for_selector("#message.error")
    assert state(rc, "Cart", "nums") == {"a": 1}


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999", "-1e400"])
def test_the_api_refuses_numbers_json_cannot_carry(
    ui: UI, rc: redis.Redis, server: Server, number: str
) -> None:
    seed(server, "Cart", "api-nums", a=1)
    headers = {"content-type": "application/json", "x-requested-by": "restate-redis"}
    bodies = {
        "/api/value": '{"service": "Cart", "key": "api-nums", "name": "b", "version": null, '
        f'"value": {{"deep": [1, {number}]}}}}',
        "/api/state": '{"service": "Cart", "key": "api-nums", "version": null, '
        f'"state": {{"a": 2, "b": {number}}}}}',
    }
    for path, body in bodies.items():
        json.loads(body)  # Python's json takes it: the API must not
        answer = httpx.put(ui.base + path, content=body, headers=headers, timeout=10)
        assert answer.status_code == 400, (path, answer.text)
        assert answer.json()["code"] == "bad_request"
        assert "not a finite number" in answer.json()["error"]
        assert "line 1 column" in answer.json()["error"]
    assert state(rc, "Cart", "api-nums") == {"a": 1}


def test_state_keys_named_like_object_properties_survive_replace_whole_state(
    ui: UI, page: Any, rc: redis.Redis, server: Server
) -> None:
    names = [
        "__proto__",
        "constructor",
        "toString",
        "hasOwnProperty",
        "valueOf",
        "__defineGetter__",
    ]
    values: dict[str, Any] = {name: {"of": name} for name in names}
    values["__proto__"] = {"polluted": True}
    values["constructor"] = 7
    seed(server, "Cart", "js", n=1, **values)
    before = raw(rc, "Cart", "js")
    page.goto(object_url(ui, "Cart", "js"))
    page.wait_for_selector('tr[data-key="__proto__"]')
    page.locator("#replace-state").click()
    text = page.locator("#state-editor").input_value()
    assert json.loads(text) == {"n": 1, **values}
    page.locator("#state-editor").fill(text.replace('"n": 1', '"n": 2'))
    page.locator("#replace-save").click()
    page.wait_for_selector("#message.ok")
    assert raw(rc, "Cart", "js") == {**before, "n": msgpack.packb(2)}
    assert page.evaluate("({}).polluted") is None


# -- robustness: stray data, large states, ports, tokens -----------------------------------------


def api_get(base: str, path: str, **params: Any) -> Any:
    response = httpx.get(base + path, params=params, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def test_listings_skip_stray_keys_and_objects_without_state(
    ui: UI, rc: redis.Redis, server: Server
) -> None:
    seed(server, "Cart", "alice", n=1)
    seed(server, "Cart", "gone", n=1)
    run_async(lambda: clear_all(server, "Cart", "gone"))
    meta = {"a": b"\x01", META_FIELD: packed_meta(1, 2)}  # bookkeeping as a session writes it
    rc.hset(b"restate:{Cart:%E2%82}:state", mapping=meta)  # a truncated UTF-8 sequence
    rc.set("restate:{Cart:str}:state", "not a hash")
    rc.hset("restate:{Cart:nometa}:state", "a", b"\x01")  # state without bookkeeping
    version = msgpack.packb([1.5, -1, 0, "", ""])  # a version that is not an integer
    rc.hset("restate:{Other:v}:state", mapping={"a": b"\x01", META_FIELD: version})
    services = api_get(ui.base, "/api/services")
    assert services["services"] == [
        {"name": "Cart", "objects": 1, "keys": 1, "bytes": 2, "unsized": 0, "lazy": 0, "near": 0}
    ]
    assert services["skipped"] == 4 and len(services["skipped_keys"]) == 4
    assert any("%E2%82" in k for k in services["skipped_keys"])
    objects = api_get(ui.base, "/api/objects", service="Cart")
    assert [o["key"] for o in objects["objects"]] == ["alice"]
    assert objects["skipped"] == 3
    assert api_get(ui.base, "/api/state", service="Cart", key="alice")["keys"][0]["value"] == 1


async def clear_all(server: Server, service: str, key: str) -> None:
    async with RedisStateStore.from_url(server.url) as store, store.object(service, key) as s:
        s.clear_all()


def test_an_object_page_answer_stays_under_the_cap(rc: redis.Redis, server: Server) -> None:
    cap = 64 * 1024
    values = {f"k{i:03}": "x" * 1000 for i in range(200)}  # about 200 KB in all
    values["big"] = "y" * 100_000  # over the preview limit: a preview
    seed(server, "Cart", "large", **values)
    capped = start_ui(server, "--max-response-bytes", str(cap))
    try:
        seen: dict[str, Any] = {}
        offset: int | None = 0
        pages = 0
        while offset is not None:
            response = httpx.get(
                capped.base + "/api/state",
                params={"service": "Cart", "key": "large", "offset": offset},
                timeout=30,
            )
            assert response.status_code == 200 and len(response.content) <= cap
            page = response.json()
            assert page["total_keys"] == 201 and page["offset"] == offset
            seen.update({e["name"]: e for e in page["keys"]})
            offset = page["next_offset"]
            pages += 1
        assert pages >= 3 and sorted(seen) == sorted(values)
        assert seen["big"]["truncated"] and "value" not in seen["big"]
        assert all(seen[name]["value"] == value for name, value in values.items() if name != "big")
    finally:
        capped.stop()


def test_port_0_prints_the_bound_port_and_a_busy_port_exits_4(
    rc: redis.Redis, server: Server
) -> None:
    url = f"{server.url}?socket_timeout=5&password=pw-s3cr3t"
    rc.config_set("requirepass", "pw-s3cr3t")
    proc = subprocess.Popen(
        [SCRIPT, "ui", "--url", url, "--port", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stderr.readline() if proc.stderr else ""
        assert "pw-s3cr3t" not in line and "password=***" in line, line
        port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
        assert port != 0
        assert httpx.get(f"http://127.0.0.1:{port}/api/services", timeout=10).status_code == 200
        busy = subprocess.run(
            [SCRIPT, "ui", "--url", url, "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert busy.returncode == 4, busy.stderr
        lines = busy.stderr.strip().splitlines()
        assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "in use" in lines[0]
        assert "pw-s3cr3t" not in busy.stderr
    finally:
        UI(proc, "").stop()
        redis.Redis.from_url(url).config_set("requirepass", "")


def test_the_token_is_ascii_and_compared_as_bytes(rc: redis.Redis, server: Server) -> None:
    refused = subprocess.run(
        [SCRIPT, "ui", "--url", server.url, "--port", "0", "--token", "t\u00f6ken-t\u00f6ken"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 1 and "ASCII" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    guarded = start_ui(server, "--token", TOKEN)
    try:
        services = guarded.base + "/api/services"
        for params in ({"token": "t\u00f6ken"}, {"token": TOKEN + "\u00e9"}):
            assert httpx.get(services, params=params, timeout=10).status_code == 401
        for header in ("Bearer t\u00f6ken".encode(), f"Bearer {TOKEN}\u00e9".encode()):
            answer = httpx.get(services, headers={"authorization": header}, timeout=10)
            assert answer.status_code == 401 and answer.json()["code"] == "unauthorized"
        assert httpx.get(services, params={"token": TOKEN}, timeout=10).status_code == 200
        wrong_type = change(
            guarded.base,
            authorization=f"Bearer {TOKEN}",
            **{"content-type": "text/plain"},
        )
        assert wrong_type.status_code == 415
        assert wrong_type.json()["code"] == "unsupported_media_type"
    finally:
        guarded.stop()


# -- the object table and the sizes ---------------------------------------------------------------


def rows_shown(page: Any) -> list[str]:
    keys: list[str] = page.locator("#objects tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.key)"
    )
    return keys


def bookkeeping(rc: redis.Redis, service: str, key: str) -> dict[str, int | None]:
    fields: dict[bytes, bytes] = rc.hgetall(f"restate:{{{service}:{key}}}:state")  # type: ignore[assignment]
    meta = meta_of(fields)
    return {
        "version": meta.version,
        "size": meta.size,
        "keys": len(state_fields(fields)),
        "changed": meta.changed_ms,
    }


def size_text(n: int) -> str:
    return f"{n} B" if n < 1024 else f"{n / 1024:.1f} KiB"


def fill_shop(server: Server, count: int = 12) -> list[str]:
    """Objects whose sizes, key counts, versions and times of change are in other orders than
    their keys."""
    keys = [f"o{i:02d}" for i in range(count)]

    async def fill() -> None:
        async with RedisStateStore.from_url(server.url) as store:
            for i in reversed(range(count)):
                async with store.object("Shop", keys[i]) as s:
                    s.set("items", ["x" * ((i * 7) % 12 * 30)])
                    for j in range(i % 4):
                        s.set(f"extra{j}", j)
                for _ in range((i * 5) % 3):
                    async with store.object("Shop", keys[i]) as s:
                        s.set("n", i)

    run_async(fill)
    return keys


def test_the_object_table_sorts_by_each_column_and_pages_keep_the_order(
    ui: UI, page: Any, rc: redis.Redis, server: Server
) -> None:
    keys = fill_shop(server)
    stored = {key: bookkeeping(rc, "Shop", key) for key in keys}
    page.goto(ui.base + "/#/s/Shop")
    page.wait_for_selector('th[data-column="key"][aria-sort="ascending"]')
    assert rows_shown(page) == keys
    row = page.locator('tr[data-key="o05"]')
    o05 = stored["o05"]
    assert row.locator("td.version").text_content() == str(o05["version"])
    assert row.locator("td.size").text_content() == size_text(o05["size"] or 0)
    assert row.locator("td.keys").text_content() == str(o05["keys"])
    changed = row.locator("td.changed").text_content()
    assert changed.endswith("Z") and len(changed) == len("2026-11-02 10:00:01Z")
    for column in ("version", "size", "keys", "changed"):
        ascending = sorted(keys, key=lambda k: (stored[k][column], k))
        descending = sorted(keys, key=lambda k: (-(stored[k][column] or 0), k))
        assert ascending != keys or column == "changed"  # the data does sort them otherwise
        page.locator(f'button[data-sort="{column}"]').click()
        page.wait_for_selector(f'th[data-column="{column}"][aria-sort="ascending"]')
        assert rows_shown(page) == ascending, column
        page.locator(f'button[data-sort="{column}"]').click()
        page.wait_for_selector(f'th[data-column="{column}"][aria-sort="descending"]')
        assert rows_shown(page) == descending, column
    page.reload()  # the order is in the address
    page.wait_for_selector('th[data-column="changed"][aria-sort="descending"]')
    assert rows_shown(page) == sorted(keys, key=lambda k: (-(stored[k]["changed"] or 0), k))


def test_state_keys_picked_as_columns_show_cut_and_escaped_previews(
    ui: UI, page: Any, rc: redis.Redis, server: Server
) -> None:
    accent = "e\u0301"  # e and a combining acute: one character on screen, two code points
    long_text = "a" * 197 + accent * 10  # the 200-character cut falls inside an accented e
    evil = '<img src=x onerror="window.__pwned = 1">\u202egnp.exe'
    seed(server, "Notes", "a", note=long_text, n=1)
    seed(server, "Notes", "b", note=evil)
    seed(server, "Notes", "c", note="z" * (70 * 1024), n=3)  # over 64 KiB: not read
    page.goto(ui.base + "/#/s/Notes")
    page.wait_for_selector('tr[data-key="c"]')
    for name in ("note", "n"):
        page.locator("#column-name").fill(name)
        page.locator("#column-name").press("Enter")
        page.wait_for_selector(f'th.value-column[data-state-key="{name}"]')
    cell = page.locator('tr[data-key="a"] td.value[data-state-key="note"]')
    shown = cell.text_content()
    assert shown.endswith("…") and shown.startswith('"aaa')
    kept = shown[:-1]
    assert len(kept) <= 200 and json.dumps(long_text, ensure_ascii=False).startswith(kept)
    assert kept.endswith(accent) or kept.endswith("a")  # never an e without its accent
    evil_cell = page.locator('tr[data-key="b"] td.value[data-state-key="note"]')
    assert evil_cell.text_content() == json.dumps(evil, ensure_ascii=False).replace(
        "\u202e", "\\u202e"
    )
    assert page.evaluate("window.__pwned") is None
    assert page.locator("#objects img").count() == 0
    big = page.locator('tr[data-key="c"] td.value[data-state-key="note"]').text_content()
    assert big == "70.0 KiB, too large to preview"
    assert page.locator('tr[data-key="b"] td.value[data-state-key="n"]').text_content() == "—"
    assert page.locator('tr[data-key="c"] td.value[data-state-key="n"]').text_content() == "3"
    page.locator('th[data-state-key="note"] button.remove-column').click()
    page.wait_for_selector('th[data-state-key="note"]', state="detached")
    assert page.locator("th.value-column").count() == 1
    stray_text = "v => [...v.childNodes].filter(n => n.nodeType === Node.TEXT_NODE).length"
    assert page.locator("#view").evaluate(stray_text) == 0  # no "null" for a missing note
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ui-objects.png"), full_page=True)


def test_service_sizes_and_eager_limit_flags(page: Any, rc: redis.Redis, server: Server) -> None:
    keys = fill_shop(server)
    sizes = {key: bookkeeping(rc, "Shop", key)["size"] or 0 for key in keys}
    limited = start_ui(server, "--eager-size-limit", "300", "--max-table-objects", "5")
    try:
        page.goto(limited.base + "/")
        row = page.locator('tr[data-service="Shop"]')
        row.wait_for()
        assert row.locator("td.objects").text_content() == "12"
        assert row.locator("td.size").text_content() == size_text(sum(sizes.values()))
        lazy = sum(size > 300 for size in sizes.values())
        near = sum(270 <= size <= 300 for size in sizes.values())
        assert lazy and near
        flags = row.locator("td.flags").text_content()
        assert f"{lazy} load{'s' if lazy == 1 else ''} lazily" in flags
        assert f"{near} near the eager limit" in flags
        row.locator("a.service").click()
        page.wait_for_selector("#objects tbody tr")
        assert "sorted among the first 5 found" in page.locator("#page-info").text_content()
        for key in rows_shown(page):
            badge = page.locator(f'tr[data-key="{key}"] .badge.load')
            if sizes[key] > 300:
                assert badge.text_content() == "loads lazily"
            elif sizes[key] >= 270:
                assert badge.text_content() == "near the eager limit"
            else:
                assert badge.count() == 0
    finally:
        limited.stop()


def test_a_table_serves_its_pages_from_one_sweep_until_asked_afresh(
    ui: UI, rc: redis.Redis, server: Server
) -> None:
    seed(server, "Swept", "a", n=1)
    first = api_get(ui.base, "/api/table", service="Swept", fresh="1")
    assert first["total"] == 1 and first["complete"] is True
    seed(server, "Swept", "b", n=2)
    assert api_get(ui.base, "/api/table", service="Swept", sort="version")["total"] == 1
    again = api_get(ui.base, "/api/table", service="Swept", fresh="1", column="n")
    assert [(o["key"], o["values"]) for o in again["objects"]] == [
        ("a", [{"size": 1, "preview": "1", "truncated": False}]),
        ("b", [{"size": 1, "preview": "2", "truncated": False}]),
    ]
