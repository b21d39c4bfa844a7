"""Encrypted and compressed values in the tools: the admin layer, ``restate-redis kv`` and
``restate-redis rekey`` (key rotation while handlers keep writing)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from restate_redis import (
    Compression,
    EncryptedValueError,
    Encryption,
    InvalidOptionError,
    RedisStateStore,
    StateEncodeError,
)
from restate_redis.codecs import inspect_stored
from restate_redis.keyspace import META_FIELD, Meta
from restate_redis.tools.admin import Admin
from tests.support.bookkeeping import packed_meta
from tests.support.keys import meta_of, state_fields
from tests.support.servers import Server

OLD, NEW = "2026-05", "2026-11"
KEYS = {OLD: bytes(range(32)), NEW: bytes(range(100, 132))}
SCRIPT = str(Path(sys.executable).with_name("restate-redis"))


def ring(current: str = NEW, *ids: str) -> Encryption:
    return Encryption({i: KEYS[i] for i in (ids or KEYS)}, current)


def env_keys(current: str = NEW, *ids: str) -> str:
    order = [current, *[i for i in (ids or KEYS) if i != current]]
    return ",".join(f"{i}={base64.b64encode(KEYS[i]).decode()}" for i in order)


def key_id(raw: bytes | None) -> str | None:
    assert raw is not None
    info = inspect_stored(raw)
    return info.key_id if info.encrypted else None


@pytest.fixture
async def sealed_store(client: aioredis.Redis) -> AsyncIterator[RedisStateStore]:
    """A handler's store: compression, then encryption under the new key."""
    s = RedisStateStore(client, codecs=[Compression(min_bytes=64), ring()])
    yield s
    await s.aclose()


async def hget(client: aioredis.Redis, service: str, key: str, name: str) -> bytes | None:
    raw = await client.hget(f"restate:{{{service}:{key}}}:state", name)
    return None if raw is None else bytes(raw)


# -- the admin layer ----------------------------------------------------------------------------


async def test_admin_with_the_keys_shows_and_writes_through_the_codecs(
    client: aioredis.Redis, sealed_store: RedisStateStore
) -> None:
    async with sealed_store.object("Cart", "alice") as ctx:
        ctx.set("token", "abc")
        ctx.set("items", [{"sku": "tea", "qty": i} for i in range(40)])
    admin = Admin(RedisStateStore(client, codecs=[ring()]))  # the CLI's store: no Compression
    state = await admin.read("Cart", "alice")
    assert state.values == {"items": [{"sku": "tea", "qty": i} for i in range(40)], "token": "abc"}
    assert state.sealed == {} and state.key_ids == {"items": NEW, "token": NEW}
    assert await admin.read_value("Cart", "alice", "token") == "abc"
    await admin.set("Cart", "alice", "token", "xyz")
    await admin.patch("Cart", "alice", [{"op": "add", "path": "/note", "value": "gift"}])
    for name in ("token", "note"):
        assert key_id(await hget(client, "Cart", "alice", name)) == NEW
    raw = await hget(client, "Cart", "alice", "note")
    assert raw is not None and b"gift" not in raw
    async with sealed_store.object("Cart", "alice", shared=True) as ctx:
        assert await ctx.get_all() == {**state.values, "token": "xyz", "note": "gift"}


async def test_admin_without_the_keys_shows_a_marker_and_refuses_to_change_it(
    client: aioredis.Redis, sealed_store: RedisStateStore
) -> None:
    async with sealed_store.object("Cart", "alice") as ctx:
        ctx.set("token", "abc")
    async with RedisStateStore(client).object("Cart", "alice") as ctx:
        ctx.set("plain", 1)  # written before encryption, or by a tool without keys
    admin = Admin(RedisStateStore(client))
    state = await admin.read("Cart", "alice")
    assert state.values == {"plain": 1, "token": {"$encrypted": NEW}}
    assert list(state.sealed) == ["token"] and "no Encryption" in state.sealed["token"]
    assert await admin.read_value("Cart", "alice", "token") == {"$encrypted": NEW}
    before = await hget(client, "Cart", "alice", "token")

    with pytest.raises(EncryptedValueError, match="'Cart'/'alice' state key 'token' is encr"):
        await admin.set("Cart", "alice", "token", "xyz")
    with pytest.raises(EncryptedValueError, match="nothing was written"):
        await admin.replace("Cart", "alice", {"plain": 1, "token": "xyz"})
    with pytest.raises(EncryptedValueError):
        await admin.patch("Cart", "alice", [{"op": "replace", "path": "/token", "value": 1}])
    with pytest.raises(StateEncodeError, match="cannot be written"):  # a marker moved elsewhere
        await admin.patch("Cart", "alice", [{"op": "copy", "from": "/token", "path": "/t2"}])
    assert await hget(client, "Cart", "alice", "token") == before

    # Left as shown, the encrypted value stays as it is while the rest changes.
    await admin.replace("Cart", "alice", {"plain": 2, "token": {"$encrypted": NEW}})
    await admin.patch("Cart", "alice", [{"op": "replace", "path": "/plain", "value": 3}])
    await admin.set("Cart", "alice", "token", {"$encrypted": NEW})  # unchanged: no write
    assert await hget(client, "Cart", "alice", "token") == before
    async with sealed_store.object("Cart", "alice", shared=True) as ctx:
        assert await ctx.get_all() == {"plain": 3, "token": "abc"}
    # Clearing needs no key.
    await admin.clear("Cart", "alice", "token")
    assert await hget(client, "Cart", "alice", "token") is None


async def test_admin_marks_a_value_that_does_not_authenticate(
    client: aioredis.Redis, sealed_store: RedisStateStore
) -> None:
    async with sealed_store.object("Cart", "alice") as ctx:
        ctx.set("token", "abc")
    raw = await hget(client, "Cart", "alice", "token")
    assert raw is not None
    # copied to another object (with bookkeeping, so it is one)
    bob = {"token": raw, META_FIELD: packed_meta(1)}
    await client.hset("restate:{Cart:bob}:state", mapping=bob)  # type: ignore[arg-type]
    state = await Admin(RedisStateStore(client, codecs=[ring()])).read("Cart", "bob")
    assert state.values == {"token": {"$encrypted": NEW}}
    assert "does not authenticate" in state.sealed["token"]


async def test_rekey_of_one_object_keeps_compression_and_skips_current_values(
    client: aioredis.Redis,
) -> None:
    old = RedisStateStore(client, codecs=[Compression(min_bytes=64), ring(OLD)])
    doc = {"items": [{"sku": "tea", "qty": i} for i in range(100)]}
    async with old.object("Cart", "alice") as ctx:
        ctx.set("doc", doc)
        ctx.set("small", 1)
    async with RedisStateStore(client).object("Cart", "alice") as ctx:
        ctx.set("plain", "before encryption")
    compressed_size = len(await hget(client, "Cart", "alice", "doc") or b"")
    admin = Admin(RedisStateStore(client, codecs=[ring()]))
    dry = await admin.rekey("Cart", "alice", dry_run=True)
    assert (dry.rewritten, dry.current, dry.found) == (0, 0, {OLD: 2, "plain": 1})
    done = await admin.rekey("Cart", "alice")
    assert (done.rewritten, done.current) == (3, 0)
    for name in ("doc", "small", "plain"):
        assert key_id(await hget(client, "Cart", "alice", name)) == NEW
    # The compressed value stays compressed: the same size under the new key.
    assert len(await hget(client, "Cart", "alice", "doc") or b"") == compressed_size
    version = Meta.parse(await client.hget("restate:{Cart:alice}:state", META_FIELD)).version
    again = await admin.rekey("Cart", "alice")
    assert (again.rewritten, again.current) == (0, 3)
    meta = Meta.parse(await client.hget("restate:{Cart:alice}:state", META_FIELD))
    assert meta.version == version  # no write
    only_new = RedisStateStore(client, codecs=[ring(NEW, NEW)])
    async with only_new.object("Cart", "alice", shared=True) as ctx:
        assert await ctx.get_all() == {"doc": doc, "small": 1, "plain": "before encryption"}
    with pytest.raises(InvalidOptionError, match="rekey needs the encryption keys"):
        await Admin(RedisStateStore(client)).rekey("Cart", "alice")


# -- the command line ---------------------------------------------------------------------------

Cli = Callable[..., "subprocess.CompletedProcess[str]"]


@pytest.fixture
def cli(server: Server, rc: redis.Redis, tmp_path: Path) -> Cli:
    def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("RESTATE_REDIS_")}
        full = {**inherited, "RESTATE_REDIS_URL": server.url, "TMPDIR": str(tmp_path), **env}
        full["COLUMNS"] = "200"
        return subprocess.run(
            [SCRIPT, *args], input="", capture_output=True, text=True, env=full, timeout=120
        )

    return run


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    return proc.stdout


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("restate-redis: error: "), proc.stderr
    return lines[-1]


@pytest.mark.parametrize("server", ["valkey"], indirect=True)
def test_kv_reads_and_writes_encrypted_values_with_the_keys_and_marks_them_without(
    cli: Cli, rc: redis.Redis, tmp_path: Path
) -> None:
    keys = env_keys()
    ok(cli("kv", "set", "Cart", "alice", "token", '"abc"', RESTATE_REDIS_KEYS=keys))
    ok(cli("kv", "set", "Cart", "alice", "plain", "1"))  # no keys: written as it is
    raw = rc.hget("restate:{Cart:alice}:state", "token")
    assert isinstance(raw, bytes) and key_id(raw) == NEW and b"abc" not in raw

    with_keys = ok(cli("kv", "get", "Cart", "alice", "--plain", RESTATE_REDIS_KEYS=keys))
    assert json.loads(with_keys) == {"plain": 1, "token": "abc"}
    table = ok(cli("kv", "get", "Cart", "alice", RESTATE_REDIS_KEYS=keys))
    assert '"abc"' in table and f"encrypted, key {NEW}" in table

    without = cli("kv", "get", "Cart", "alice", "--plain")
    assert json.loads(ok(without)) == {"plain": 1, "token": {"$encrypted": NEW}}
    assert f"1 value of Cart/alice is encrypted under key id {NEW}" in without.stderr
    assert "runs without keys (RESTATE_REDIS_KEYS)" in without.stderr
    table = ok(cli("kv", "get", "Cart", "alice"))
    assert f"(encrypted under key {NEW}: not readable here)" in table
    assert raw.hex() not in table and base64.b64encode(raw).decode() not in table

    refused = one_line_error(cli("kv", "set", "Cart", "alice", "token", '"xyz"'))
    assert "'Cart'/'alice' state key 'token' is encrypted and cannot be changed here" in refused
    patch = '[{"op": "replace", "path": "/token", "value": "x"}]'
    assert "is encrypted" in one_line_error(cli("kv", "patch", "Cart/alice", "--patch", patch))
    editor = tmp_path / "editor.py"
    editor.write_text(
        "import json, sys\ndoc = json.load(open(sys.argv[1]))\n"
        "assert doc['token'] == {'$encrypted': '2026-11'}, doc\ndoc['plain'] = 2\n"
        "json.dump(doc, open(sys.argv[1], 'w'))\n"
    )
    ok(cli("kv", "edit", "Cart", "alice", EDITOR=f"{sys.executable} {editor}"))
    assert rc.hget("restate:{Cart:alice}:state", "token") == raw  # left as it was
    assert json.loads(ok(cli("kv", "get", "Cart/alice", "--plain", RESTATE_REDIS_KEYS=keys))) == {
        "plain": 2,
        "token": "abc",
    }

    # A key list that does not parse is one line, naming the entry and no key material.
    secret = base64.b64encode(KEYS[NEW]).decode()
    bad = one_line_error(cli("kv", "get", "Cart", "alice", RESTATE_REDIS_KEYS=f"{secret}"))
    assert "RESTATE_REDIS_KEYS: entry 1 is not ID=BASE64" in bad and secret not in bad
    # A wrong key under the right id: the value does not authenticate, and is marked.
    wrong = f"{NEW}={base64.b64encode(bytes(32)).decode()}"
    proc = cli("kv", "get", "Cart", "alice", "--plain", RESTATE_REDIS_KEYS=wrong)
    assert json.loads(ok(proc))["token"] == {"$encrypted": NEW}
    assert "does not authenticate" in proc.stderr


@pytest.mark.parametrize("server", ["valkey"], indirect=True)
def test_keys_from_a_file(cli: Cli, rc: redis.Redis, tmp_path: Path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text("# the ring\n" + env_keys().replace(",", "\n") + "\n")
    ok(cli("kv", "set", "Svc", "o", "v", "[1, 2]", RESTATE_REDIS_KEYS_FILE=str(key_file)))
    assert key_id(rc.hget("restate:{Svc:o}:state", "v")) == NEW  # type: ignore[arg-type]
    got = ok(cli("kv", "get", "Svc", "o", "--plain", RESTATE_REDIS_KEYS_FILE=str(key_file)))
    assert json.loads(got) == {"v": [1, 2]}
    missing = one_line_error(cli("kv", "get", "Svc", "o", RESTATE_REDIS_KEYS_FILE="/nonexistent"))
    assert "cannot read the key file '/nonexistent'" in missing


# -- rekey: rotation while handlers write -------------------------------------------------------


@pytest.mark.parametrize("server", ["valkey"], indirect=True)
def test_rekey_needs_keys_and_names_services_it_does_not_find(cli: Cli) -> None:
    assert "rekey needs the encryption keys" in one_line_error(cli("rekey"))
    proc = cli("rekey", "Nothing", RESTATE_REDIS_KEYS=env_keys())
    assert "nothing is stored for service 'Nothing'" in proc.stderr
    assert ok(proc).strip() == (
        f"rekeyed 0 values in 0 objects to key {NEW}; 0 values of 0 objects were already under it"
    )


@pytest.mark.parametrize("server", ["valkey"], indirect=True)
def test_rotation_with_rekey_under_concurrent_writers_loses_nothing(
    server: Server, rc: redis.Redis
) -> None:
    objects = [f"c{i}" for i in range(12)]

    async def scenario() -> dict[str, int]:
        increments: dict[str, int] = dict.fromkeys(objects, 0)

        async def writer(store: RedisStateStore, key: str, stop: asyncio.Event) -> None:
            while not stop.is_set():
                async with store.object("Counter", key) as ctx:
                    ctx.set("n", (await ctx.get("n") or 0) + 1)
                    ctx.set("log", [*(await ctx.get("log") or []), "x"][-50:])
                increments[key] += 1

        # Before the rotation: the old key is current.
        async with RedisStateStore.from_url(server.url, codecs=[ring(OLD, OLD)]) as before:
            stop = asyncio.Event()
            tasks = [asyncio.create_task(writer(before, k, stop)) for k in objects]
            await asyncio.sleep(0.3)
            stop.set()
            await asyncio.gather(*tasks)
            async with before.object("Counter", "plain-one") as ctx:
                ctx.set("n", 0)
        # The rotation: workers get the new key as current, and rekey runs while they write.
        codecs = [Compression(min_bytes=64), ring(NEW, NEW, OLD)]
        async with RedisStateStore.from_url(server.url, codecs=codecs) as after:
            stop = asyncio.Event()
            tasks = [asyncio.create_task(writer(after, k, stop)) for k in objects]
            proc = await asyncio.create_subprocess_exec(
                SCRIPT, "rekey", "Counter", "--url", server.url, "--concurrency", "3",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                env={**os.environ, "RESTATE_REDIS_KEYS": env_keys(NEW), "COLUMNS": "120"},
            )  # fmt: skip
            out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
            stop.set()
            await asyncio.gather(*tasks)
        assert proc.returncode == 0, (out, err)
        assert "rekeyed" in out.decode() and "Traceback" not in err.decode()
        assert "13/13" in err.decode()  # the progress bar, on stderr
        return increments

    increments = asyncio.run(scenario())
    # Nothing lost: every increment of every writer, before and during the rotation.
    only_new = RedisStateStore.from_url(server.url, codecs=[ring(NEW, NEW)])

    async def read() -> dict[str, int]:
        async with only_new:
            counts = {}
            for key in objects:
                async with only_new.object("Counter", key, shared=True) as ctx:
                    counts[key] = await ctx.get("n")
            return counts

    assert asyncio.run(read()) == increments
    assert all(n > 0 for n in increments.values())
    # Every value is under the new key; the old key can go.
    for key in [*objects, "plain-one"]:
        stored = state_fields(rc.hgetall(f"restate:{{Counter:{key}}}:state"))  # type: ignore[arg-type]
        for name, raw in stored.items():
            assert key_id(raw) == NEW, (key, name)

    # Idempotent: a second run writes nothing (no version moves) and says so.
    def versions_now() -> dict[str, int]:
        return {
            k: meta_of(rc.hgetall(f"restate:{{Counter:{k}}}:state")).version  # type: ignore[arg-type]
            for k in objects
        }

    versions = versions_now()
    env = {**os.environ, "RESTATE_REDIS_KEYS": env_keys(NEW), "RESTATE_REDIS_URL": server.url}
    again = subprocess.run(
        [SCRIPT, "rekey"], capture_output=True, text=True, env=env, timeout=120, check=True
    )
    assert f"rekeyed 0 values in 0 objects to key {NEW}" in again.stdout
    assert versions_now() == versions
    dry = subprocess.run(
        [SCRIPT, "rekey", "--dry-run"], capture_output=True, text=True, env=env, check=True
    )
    assert dry.stdout.startswith(f"0 values of 13 objects not under key {NEW};")


@pytest.mark.parametrize("server", ["valkey"], indirect=True)
def test_rekey_dry_run_counts_by_key_and_a_failure_is_reported(
    cli: Cli, rc: redis.Redis, server: Server
) -> None:
    async def seed() -> None:
        async with RedisStateStore.from_url(server.url, codecs=[ring(OLD)]) as old:
            for key in ("a", "b"):
                async with old.object("Cart", key) as ctx:
                    ctx.set("x", 1)
                    ctx.set("y", 2)
        async with RedisStateStore.from_url(server.url) as plain, plain.object("Cart", "c") as ctx:
            ctx.set("x", 1)

    asyncio.run(seed())
    dry = ok(cli("rekey", "--dry-run", RESTATE_REDIS_KEYS=env_keys()))
    assert dry.strip() == (
        f"5 values of 3 objects not under key {NEW} (4 under {OLD}, 1 under plain); 0 already are"
    )
    rc.hset("restate:{Cart:b}:state", "y", rc.hget("restate:{Cart:a}:state", "y"))  # type: ignore[arg-type]
    proc = cli("rekey", "Cart", RESTATE_REDIS_KEYS=env_keys())
    assert "1 object could not be rekeyed" in one_line_error(proc)
    assert (
        "'Cart'/'b' state key 'y' under key id '2026-05': it does not authenticate" in proc.stderr
    )
    assert f"rekeyed 3 values in 2 objects to key {NEW}" in proc.stdout
    assert key_id(rc.hget("restate:{Cart:b}:state", "x")) == OLD  # type: ignore[arg-type]
