"""Value codecs: compression and encryption at rest, as Redis holds them and as a reader sees
them (round trips, old and new data side by side, tampering, moved values, key rings)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import redis.asyncio as aioredis

from restate_redis import (
    BytesSerde,
    Compression,
    EncryptedValueError,
    Encryption,
    InvalidOptionError,
    JsonSerde,
    RedisStateStore,
    Serde,
    StateDecodeError,
    ValueTooLargeError,
)
from restate_redis.codecs import StoredBytes, inspect_stored
from tests.core.test_serde import CASES

OLD, NEW = "2026-05", "2026-11"
KEYS = {OLD: bytes(range(32)), NEW: bytes(range(100, 132))}


def ring(current: str = NEW, *, allow_plain: bool = True, **keys: bytes) -> Encryption:
    return Encryption(keys=keys or KEYS, current=current, allow_plain=allow_plain)


def big_document(n: int = 200) -> dict[str, Any]:
    """A JSON-like value that compresses (repeated field names, similar values)."""
    return {
        "items": [
            {"sku": f"sku-{i % 37:04d}", "qty": i % 5, "price": 9.5, "tags": ["a", "b"]}
            for i in range(n)
        ],
        "owner": "alice",
    }


CONFIGS = {
    "zstd": lambda: [Compression(min_bytes=1)],
    "aes": lambda: [ring()],
    "zstd+aes": lambda: [Compression(min_bytes=1), ring()],
}


@pytest.fixture(params=list(CONFIGS))
def config(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def coded(client: aioredis.Redis, config: str) -> AsyncIterator[RedisStateStore]:
    s = RedisStateStore(client, lease_ttl=5, acquire_timeout=10, codecs=CONFIGS[config]())
    yield s
    await s.aclose()


async def stored(client: aioredis.Redis, service: str, key: str, name: str) -> bytes:
    raw = await client.hget(f"restate:{{{service}:{key}}}:state", name)
    assert raw is not None, (service, key, name)
    return bytes(raw)


# -- round trips --------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "hint"), CASES, ids=[repr(h) for _, h in CASES])
@pytest.mark.parametrize("serde", [None, JsonSerde()], ids=["msgpack", "json"])
async def test_every_value_type_round_trips_through_each_codec(
    coded: RedisStateStore,
    client: aioredis.Redis,
    config: str,
    value: Any,
    hint: Any,
    serde: Serde[Any] | None,
) -> None:
    async with coded.object("Svc", "o") as ctx:
        ctx.set("v", value, serde=serde)
        assert await ctx.get("v", serde=serde, type_hint=hint) == value  # from the write buffer
    for preload in (True, False, ["v"]):
        async with coded.object("Svc", "o", shared=True, state_preload=preload) as ctx:
            got = await ctx.get("v", serde=serde, type_hint=hint)
        assert got == value
        if isinstance(hint, type):
            assert type(got) is hint
    raw = await stored(client, "Svc", "o", "v")
    plain = (serde or coded.serde).serialize(value)
    if "aes" in config:  # the per-call serde's output was encrypted too
        assert raw[:2] == b"\xc1E" and (len(plain) < 6 or plain not in raw)
        assert inspect_stored(raw).key_id == NEW
    elif len(raw) < len(plain):
        assert raw[:2] == b"\xc1Z"
    else:  # too small to gain from zstd: stored as the serde wrote it
        assert raw == plain


async def test_a_large_json_like_value_is_stored_compressed_then_encrypted(
    coded: RedisStateStore, client: aioredis.Redis, config: str
) -> None:
    doc = big_document()
    async with coded.object("Cart", "alice") as ctx:
        ctx.set("doc", doc)
        ctx.set("json", doc, serde=JsonSerde())
    raw, raw_json = (
        await stored(client, "Cart", "alice", "doc"),
        await stored(client, "Cart", "alice", "json"),
    )
    packed = msgpack.packb(doc)
    if config == "zstd":
        assert raw[:2] == b"\xc1Z" and len(raw) * 3 < len(packed)
        assert raw_json[:2] == b"\xc1Z" and b"sku-" not in raw_json
    elif config == "aes":  # encrypted, not compressed: the size of the value plus the header
        assert len(raw) == len(packed) + 2 + 1 + len(NEW) + 12 + 16
    else:  # compressed inside the ciphertext
        assert raw[:2] == b"\xc1E" and len(raw) * 3 < len(packed)
    async with coded.object("Cart", "alice", shared=True) as ctx:
        assert await ctx.get("doc") == doc
        assert await ctx.get("json", serde=JsonSerde()) == doc


async def test_compression_keeps_small_and_incompressible_values_as_they_are(
    client: aioredis.Redis,
) -> None:
    store = RedisStateStore(client, codecs=[Compression(min_bytes=1024)])
    noise = os.urandom(4096)
    async with store.object("Svc", "o") as ctx:
        ctx.set("small", "x" * 500)
        ctx.set("noise", noise)
        ctx.set("big", "x" * 5000)
    assert await stored(client, "Svc", "o", "small") == msgpack.packb("x" * 500)
    assert await stored(client, "Svc", "o", "noise") == msgpack.packb(noise)
    big = await stored(client, "Svc", "o", "big")
    assert big[:2] == b"\xc1Z" and len(big) < 100
    async with store.object("Svc", "o", shared=True) as ctx:
        assert await ctx.get_all() == {"small": "x" * 500, "noise": noise, "big": "x" * 5000}


async def test_bytes_that_start_like_a_header_are_kept_apart(client: aioredis.Redis) -> None:
    """A BytesSerde value starting with 0xC1 is escaped, with or without codecs."""
    tricky = [b"\xc1", b"\xc1E\x07whatever-looks-sealed", b"\xc1Z\x28\xb5\x2f\xfd", b"\xc1P"]
    for codecs in ([], [Compression(min_bytes=1)], [ring()]):
        store = RedisStateStore(client, codecs=codecs)
        async with store.object("Svc", "tricky") as ctx:
            for i, value in enumerate(tricky):
                ctx.set(f"b{i}", value, serde=BytesSerde())
        async with store.object("Svc", "tricky", shared=True) as ctx:
            for i, value in enumerate(tricky):
                assert await ctx.get(f"b{i}", serde=BytesSerde()) == value
        if not codecs:
            assert await stored(client, "Svc", "tricky", "b0") == b"\xc1P\xc1"
    # Values that do not start with 0xC1 stay byte for byte what the serde wrote.
    store = RedisStateStore(client)
    async with store.object("Svc", "plain") as ctx:
        ctx.set("b", b"\x00raw\xc1", serde=BytesSerde())
    assert await stored(client, "Svc", "plain", "b") == b"\x00raw\xc1"


# -- old and new data ---------------------------------------------------------------------------


async def test_old_plain_data_and_new_encoded_data_live_side_by_side(
    client: aioredis.Redis,
) -> None:
    before = RedisStateStore(client)  # the deployment before codecs were configured
    async with before.object("Cart", "alice") as ctx:
        ctx.set("old", {"n": 1})
        ctx.set("old-json", [1, 2], serde=JsonSerde())
    compressing = RedisStateStore(client, codecs=[Compression(min_bytes=1)])
    async with compressing.object("Cart", "alice") as ctx:
        assert await ctx.get("old") == {"n": 1}
        ctx.set("zipped", "z" * 3000)
    both = RedisStateStore(client, codecs=[Compression(min_bytes=1), ring()])
    async with both.object("Cart", "alice") as ctx:
        assert await ctx.get("old") == {"n": 1}
        assert await ctx.get("old-json", serde=JsonSerde()) == [1, 2]
        assert await ctx.get("zipped") == "z" * 3000
        ctx.set("sealed", "secret")
    assert (await stored(client, "Cart", "alice", "old")) == msgpack.packb({"n": 1})
    # A store without codecs still reads compressed values, and says what it cannot read.
    async with before.object("Cart", "alice", shared=True) as ctx:
        assert await ctx.get("zipped") == "z" * 3000
        assert await ctx.get("old") == {"n": 1}
        with pytest.raises(EncryptedValueError) as caught:
            await ctx.get("sealed")
    message = str(caught.value)
    assert "'Cart'/'alice' state key 'sealed'" in message and f"key id {NEW!r}" in message
    assert "no Encryption" in message and caught.value.key_id == NEW


async def test_allow_plain_false_refuses_values_that_are_not_encrypted(
    client: aioredis.Redis,
) -> None:
    async with RedisStateStore(client).object("Svc", "o") as ctx:
        ctx.set("planted", 1)
    strict = RedisStateStore(client, codecs=[ring(allow_plain=False)])
    async with strict.object("Svc", "o") as ctx:
        ctx.set("sealed", 2)
        assert await ctx.get("sealed") == 2
        with pytest.raises(StateDecodeError, match="'Svc'/'o' state key 'planted' is not encr"):
            await ctx.get("planted")


# -- tampering, moved values, key rings ---------------------------------------------------------


async def test_a_tampered_ciphertext_is_a_decode_error_naming_the_key(
    client: aioredis.Redis,
) -> None:
    # The bytes are changed in place behind the store's back, which its snapshot cache (keyed
    # to the commits the library makes) would not see: off here.
    store = RedisStateStore(client, codecs=[ring()], snapshot_cache_bytes=0)
    async with store.object("Cart", "alice") as ctx:
        ctx.set("token", "abc")
    state = store.keyspace.object_keys("Cart", "alice").state
    raw = await stored(client, "Cart", "alice", "token")
    for i in (len(raw) - 1, len(raw) - 20, 3 + len(NEW) + 1):  # tag, ciphertext, nonce
        flipped = raw[:i] + bytes([raw[i] ^ 1]) + raw[i + 1 :]
        await client.hset(state, "token", flipped)
        async with store.object("Cart", "alice", shared=True) as ctx:
            with pytest.raises(StateDecodeError) as caught:
                await ctx.get("token")
        assert "'Cart'/'alice' state key 'token'" in str(caught.value)
        assert "does not authenticate" in str(caught.value)
        assert not isinstance(caught.value, EncryptedValueError)
    # A header edited to name the other key of the ring: that key does not open it either.
    other = raw[:2] + bytes([len(OLD)]) + OLD.encode() + raw[3 + len(NEW) :]
    await client.hset(state, "token", other)
    async with store.object("Cart", "alice", shared=True) as ctx:
        with pytest.raises(StateDecodeError, match=f"under key id {OLD!r}"):
            await ctx.get("token")
    # Truncated: a malformed header.
    await client.hset(state, "token", raw[:10])
    async with store.object("Cart", "alice", shared=True) as ctx:
        with pytest.raises(StateDecodeError, match="state key 'token' has a malformed"):
            await ctx.get("token")


async def test_an_unknown_key_id_is_named(client: aioredis.Redis) -> None:
    rotated_away = RedisStateStore(client, codecs=[Encryption({"2025-01": bytes(32)}, "2025-01")])
    async with rotated_away.object("Svc", "o") as ctx:
        ctx.set("v", 1)
    store = RedisStateStore(client, codecs=[ring()])
    async with store.object("Svc", "o", shared=True) as ctx:
        with pytest.raises(EncryptedValueError) as caught:
            await ctx.get("v")
    assert "key id '2025-01'" in str(caught.value) and f"{NEW!r}, {OLD!r}" in str(caught.value)
    assert caught.value.key_id == "2025-01"
    assert isinstance(caught.value, StateDecodeError)


async def test_a_value_moved_to_another_object_or_state_key_does_not_decrypt(
    client: aioredis.Redis,
) -> None:
    # the bytes are copied behind the store's back, past its snapshot cache: off here
    store = RedisStateStore(
        client, codecs=[Compression(min_bytes=1), ring()], snapshot_cache_bytes=0
    )
    async with store.object("Account", "alice") as ctx:
        ctx.set("balance", 1_000_000)
    async with store.object("Account", "mallory") as ctx:
        ctx.set("balance", 1)
    raw = await stored(client, "Account", "alice", "balance")
    targets = [
        ("Account", "mallory", "balance"),  # another object
        ("Account", "alice", "limit"),  # another state key of the same object
        ("Other", "alice", "balance"),  # another service
    ]
    for service, key, name in targets:
        await client.hset(store.keyspace.object_keys(service, key).state, name, raw)
        async with store.object(service, key, shared=True) as ctx:
            with pytest.raises(StateDecodeError, match="does not authenticate") as caught:
                await ctx.get(name)
        assert f"{service!r}/{key!r} state key {name!r}" in str(caught.value)
    async with store.object("Account", "alice", shared=True) as ctx:
        assert await ctx.get("balance") == 1_000_000  # where it belongs, it still decrypts


async def test_old_keys_of_the_ring_still_decrypt_and_new_values_use_the_current(
    client: aioredis.Redis,
) -> None:
    old = RedisStateStore(client, codecs=[ring(OLD)])
    async with old.object("Svc", "o") as ctx:
        ctx.set("a", "from before")
    new = RedisStateStore(client, codecs=[ring(NEW)])
    async with new.object("Svc", "o") as ctx:
        assert await ctx.get("a") == "from before"
        ctx.set("b", "after")
    assert inspect_stored(await stored(client, "Svc", "o", "a")).key_id == OLD
    assert inspect_stored(await stored(client, "Svc", "o", "b")).key_id == NEW
    only_new = RedisStateStore(client, codecs=[Encryption({NEW: KEYS[NEW]}, NEW)])
    async with only_new.object("Svc", "o", shared=True) as ctx:
        assert await ctx.get("b") == "after"
        with pytest.raises(EncryptedValueError, match=f"key id {OLD!r}"):
            await ctx.get("a")
        # The bytes as stored are still there for a tool to look at.
        assert (await ctx.get("a", serde=StoredBytes()))[:2] == b"\xc1E"


async def test_decompression_is_bounded(client: aioredis.Redis) -> None:
    async with RedisStateStore(client, codecs=[Compression()]).object("Svc", "o") as ctx:
        ctx.set("big", "x" * 100_000)
    bounded = RedisStateStore(client, codecs=[Compression(max_bytes=10_000)])
    async with bounded.object("Svc", "o", shared=True) as ctx:
        with pytest.raises(StateDecodeError, match=r"would decompress to 10000[0-9] bytes"):
            await ctx.get("big")
    state = bounded.keyspace.object_keys("Svc", "o").state
    await client.hset(state, "junk", b"\xc1Znot a frame")
    async with bounded.object("Svc", "o", shared=True) as ctx:
        with pytest.raises(StateDecodeError, match="cannot decompress 'Svc'/'o' state key 'junk'"):
            await ctx.get("junk")
    await client.hset(state, "odd", b"\xc1Qheader")
    async with bounded.object("Svc", "o", shared=True) as ctx:
        with pytest.raises(StateDecodeError, match="a header b'\\\\xc1Q' no codec writes"):
            await ctx.get("odd")


async def test_max_value_bytes_applies_to_the_bytes_stored(client: aioredis.Redis) -> None:
    zipped = RedisStateStore(client, codecs=[Compression()], max_value_bytes=1000)
    async with zipped.object("Svc", "o") as ctx:
        ctx.set("fits-compressed", "x" * 50_000)
        with pytest.raises(ValueTooLargeError):
            ctx.set("noise", os.urandom(2000))
    sealed = RedisStateStore(client, codecs=[ring()], max_value_bytes=1000)
    async with sealed.object("Svc", "o") as ctx:
        with pytest.raises(ValueTooLargeError, match=r"is 10[0-9][0-9] bytes encoded"):
            ctx.set("near", b"x" * 980)  # fits as it is, not with the header, nonce and tag


async def test_a_replay_reads_the_prior_values_through_the_codecs(client: aioredis.Redis) -> None:
    store = RedisStateStore(client, codecs=[Compression(min_bytes=1), ring()])
    async with store.object("Svc", "o") as ctx:
        ctx.set("n", 1)
    async with store.object("Svc", "o", commit_id="inv-1") as ctx:
        ctx.set("n", (await ctx.get("n")) + 1)
    async with store.object("Svc", "o", commit_id="inv-1") as ctx:  # the retry
        assert ctx.replayed and await ctx.get("n") == 1
        ctx.set("n", (await ctx.get("n")) + 1)
    async with store.object("Svc", "o", shared=True) as ctx:
        assert await ctx.get("n") == 2


# -- options and keys ---------------------------------------------------------------------------


def test_codec_options_are_checked() -> None:
    with pytest.raises(InvalidOptionError, match="Compression before Encryption"):
        RedisStateStore.from_url("redis://127.0.0.1:1", codecs=[ring(), Compression()])
    with pytest.raises(InvalidOptionError, match="holds Compression twice"):
        RedisStateStore.from_url("redis://127.0.0.1:1", codecs=[Compression(), Compression()])
    with pytest.raises(InvalidOptionError, match="takes Compression and Encryption, got Json"):
        RedisStateStore.from_url("redis://127.0.0.1:1", codecs=[JsonSerde()])  # type: ignore[list-item]
    with pytest.raises(InvalidOptionError, match="min_bytes must be a positive int"):
        Compression(min_bytes=0)
    with pytest.raises(InvalidOptionError, match="level must be an int from 1 to 22"):
        Compression(level=30)
    with pytest.raises(InvalidOptionError, match="must be 32 bytes \\(AES-256\\), got 16 bytes"):
        Encryption({"k": bytes(16)}, "k")
    with pytest.raises(InvalidOptionError, match="'nope' is not among the keys"):
        Encryption({"k": bytes(32)}, "nope")
    with pytest.raises(InvalidOptionError, match="must not hold '='"):
        Encryption({"a=b": bytes(32)}, "a=b")
    with pytest.raises(InvalidOptionError, match="non-empty mapping"):
        Encryption({}, "k")


def test_keys_from_the_environment_and_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    new, old = Encryption.generate_key(), Encryption.generate_key()
    text = f"{NEW}={base64.b64encode(new).decode()},{OLD}={base64.b64encode(old).decode()}"
    monkeypatch.setenv("RESTATE_REDIS_KEYS", text)
    enc = Encryption.from_env()
    assert enc.current == NEW and enc.key_ids == (NEW, OLD)
    secret = base64.b64encode(new).decode()
    assert (
        secret not in repr(enc)
        and repr(enc) == f"Encryption(current={NEW!r}, key_ids=[{NEW!r}, {OLD!r}])"
    )

    key_file = tmp_path / "keys"
    key_file.write_text(f"# rotated 2026-11\n{text.replace(',', chr(10))}\n\n")
    from_file = Encryption.from_file(key_file)
    assert from_file.key_ids == (NEW, OLD)
    monkeypatch.delenv("RESTATE_REDIS_KEYS")
    monkeypatch.setenv("RESTATE_REDIS_KEYS_FILE", str(key_file))
    assert Encryption.from_env().key_ids == (NEW, OLD)
    monkeypatch.delenv("RESTATE_REDIS_KEYS_FILE")
    with pytest.raises(InvalidOptionError, match="RESTATE_REDIS_KEYS is not set"):
        Encryption.from_env()

    # Errors name the entry or key id, never key material.
    short = base64.b64encode(b"s3cr3t-but-short").decode()
    for bad, why in (
        (f"{NEW}={short}", "entry 1: the key must be 32 bytes (AES-256), got 16"),
        (f"{NEW}=not*base64", "entry 1: the key is not valid base64"),
        (f"{NEW}={secret},{secret}", "entry 2 is not ID=BASE64"),  # a key without its id
        (f"{secret[:-2]}==", "entry 1: the key is not valid base64"),
        (f"{NEW}={secret},{NEW}={secret}", f"key id {NEW!r} is given twice"),
        ("", "holds no key"),
    ):
        monkeypatch.setenv("RESTATE_REDIS_KEYS", bad)
        with pytest.raises(InvalidOptionError) as caught:
            Encryption.from_env()
        assert why in str(caught.value), str(caught.value)
        assert "environment variable RESTATE_REDIS_KEYS" in str(caught.value)
        assert secret not in str(caught.value) and short not in str(caught.value)
    with pytest.raises(InvalidOptionError, match="cannot read the key file"):
        Encryption.from_file(tmp_path / "missing")


def test_a_missing_package_names_the_extra() -> None:
    code = (
        "import sys\n"
        "sys.modules['zstandard'] = None\n"
        "sys.modules['cryptography'] = None\n"
        "import restate_redis\n"
        "for make in (lambda: restate_redis.Compression(),\n"
        "             lambda: restate_redis.Encryption({'k': bytes(32)}, 'k')):\n"
        "    try:\n"
        "        make()\n"
        "    except ImportError as exc:\n"
        "        print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == [
        "Compression needs the zstandard package: pip install 'restate-redis[codecs]'",
        "Encryption needs the cryptography package: pip install 'restate-redis[codecs]'",
    ]


def test_nothing_secret_in_a_store_repr_or_a_session_error() -> None:
    key = Encryption.generate_key()
    enc = Encryption({"k1": key}, "k1")
    shown = repr(enc) + repr(Compression())
    for form in (key.hex(), base64.b64encode(key).decode(), repr(key)):
        assert form not in shown
    assert json.dumps(shown)  # plain text
