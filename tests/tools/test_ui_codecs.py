"""The web UI and encrypted values: read and changed with ``RESTATE_REDIS_KEYS``, shown as
encrypted (never as ciphertext) and left alone without; in headless Chromium and over the API."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from restate_redis import Encryption, RedisStateStore
from restate_redis.codecs import inspect_stored
from tests.support.servers import Server
from tests.tools.test_ui import ARTIFACTS, UI, object_url, run_async, start_ui
from tests.tools.test_ui import browser as browser  # the fixtures, shared
from tests.tools.test_ui import page as page

pytestmark = pytest.mark.parametrize("server", ["valkey"], indirect=True)

NEW, OLD = "2026-11", "2026-05"
KEYS = {NEW: bytes(range(100, 132)), OLD: bytes(range(32))}
ENV_KEYS = ",".join(f"{i}={base64.b64encode(k).decode()}" for i, k in KEYS.items())


def seed_encrypted(server: Server, service: str, key: str, **values: object) -> None:
    async def write() -> None:
        store = RedisStateStore.from_url(server.url, codecs=[Encryption(KEYS, NEW)])
        async with store, store.object(service, key) as s:
            for name, value in values.items():
                s.set(name, value)

    run_async(write)


def seed_plain(server: Server, service: str, key: str, **values: object) -> None:
    async def write() -> None:
        async with RedisStateStore.from_url(server.url) as store, store.object(service, key) as s:
            for name, value in values.items():
                s.set(name, value)

    run_async(write)


@pytest.fixture
def ui_without_keys(server: Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[UI]:
    monkeypatch.delenv("RESTATE_REDIS_KEYS", raising=False)
    monkeypatch.delenv("RESTATE_REDIS_KEYS_FILE", raising=False)
    started = start_ui(server)
    yield started
    started.stop()


@pytest.fixture
def ui_with_keys(server: Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[UI]:
    monkeypatch.setenv("RESTATE_REDIS_KEYS", ENV_KEYS)
    started = start_ui(server)
    yield started
    started.stop()


def put_value(base: str, name: str, value: Any) -> httpx.Response:
    body = {"service": "Cart", "key": "alice", "name": name, "value": value, "version": None}
    headers = {"content-type": "application/json", "x-requested-by": "restate-redis"}
    return httpx.put(base + "/api/value", content=json.dumps(body), headers=headers, timeout=10)


def entries(base: str) -> dict[str, Any]:
    answer = httpx.get(base + "/api/state", params={"service": "Cart", "key": "alice"}, timeout=10)
    assert answer.status_code == 200, answer.text
    return {entry["name"]: entry for entry in answer.json()["keys"]}


def test_without_keys_an_encrypted_value_is_shown_as_encrypted_and_cannot_be_edited(
    ui_without_keys: UI, page: Any, rc: redis.Redis, server: Server
) -> None:
    seed_encrypted(server, "Cart", "alice", token="s3cret-token")
    seed_plain(server, "Cart", "alice", count=1)
    raw = rc.hget("restate:{Cart:alice}:state", "token")
    assert isinstance(raw, bytes) and inspect_stored(raw).key_id == NEW

    found = entries(ui_without_keys.base)
    assert found["token"]["value"] == {"$encrypted": NEW}
    assert found["token"]["encrypted"] == NEW and "no Encryption" in found["token"]["sealed"]
    assert found["count"] == {"name": "count", "size": 1, "ttl_ms": None, "value": 1}
    refused = put_value(ui_without_keys.base, "token", "other")
    assert refused.status_code == 403 and refused.json()["code"] == "encrypted"
    assert "'Cart'/'alice' state key 'token' is encrypted" in refused.json()["error"]
    assert rc.hget("restate:{Cart:alice}:state", "token") == raw

    page.goto(object_url(ui_without_keys, "Cart", "alice"))
    row = page.locator('tr[data-key="token"]')
    row.wait_for()
    text = row.text_content()
    assert "encrypted" in text and f"under key {NEW}" in text and "RESTATE_REDIS_KEYS" in text
    assert "s3cret" not in page.content() and base64.b64encode(raw).decode()[:16] not in text
    assert row.locator("button.edit").is_disabled()
    # The other values are edited as usual; "replace the whole state" keeps the encrypted one.
    edit_row = page.locator('tr[data-key="count"]')
    edit_row.locator("button.edit").click()
    edit_row.locator("textarea.editor").fill("2")
    edit_row.locator("button.save").click()
    page.wait_for_selector("#message.ok")
    page.locator("#replace-state").click()
    editor = page.locator("#state-editor")
    doc = json.loads(editor.input_value())
    assert doc == {"count": 2, "token": {"$encrypted": NEW}}
    editor.fill(json.dumps({**doc, "count": 3}))
    page.locator("#replace-save").click()
    page.wait_for_selector("#message.ok >> text=Replaced the state")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ui-encrypted-without-keys.png"), full_page=True)
    assert rc.hget("restate:{Cart:alice}:state", "token") == raw


def test_with_keys_an_encrypted_value_is_shown_decrypted_and_saved_encrypted(
    ui_with_keys: UI, page: Any, rc: redis.Redis, server: Server
) -> None:
    seed_encrypted(server, "Cart", "alice", token="s3cret-token", count=1)
    found = entries(ui_with_keys.base)
    assert found["token"]["value"] == "s3cret-token" and found["token"]["encrypted"] == NEW
    assert "sealed" not in found["token"]

    page.goto(object_url(ui_with_keys, "Cart", "alice"))
    row = page.locator('tr[data-key="token"]')
    row.wait_for()
    assert '"s3cret-token"' in row.text_content()
    assert f"encrypted, key {NEW}" in row.locator("td.size").text_content()
    row.locator("button.edit").click()
    row.locator("textarea.editor").fill('"rotated-token"')
    row.locator("button.save").click()
    page.wait_for_selector("#message.ok")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ui-encrypted-with-keys.png"), full_page=True)
    raw = rc.hget("restate:{Cart:alice}:state", "token")
    assert isinstance(raw, bytes) and inspect_stored(raw).key_id == NEW and b"rotated" not in raw

    async def read() -> Any:
        store = RedisStateStore.from_url(server.url, codecs=[Encryption(KEYS, NEW)])
        async with store, store.object("Cart", "alice", shared=True) as s:
            return await s.get("token")

    assert run_async(read) == "rotated-token"
