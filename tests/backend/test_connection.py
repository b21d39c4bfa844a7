"""Connection forms: URL parsing, TLS, Unix sockets, ACL users, cluster and sentinel URLs."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import AuthenticationError

from restate_redis import RedisStateStore, StateError, StoreError
from restate_redis.backend.connection import ConnectionSpec, connect, parse_url
from tests.support.servers import (
    Server,
    free_port,
    running_server,
    start_server_in,
    unavailable,
)

# -- parsing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379/0",
        "rediss://user:pw@example.com:6380/2?ssl_cert_reqs=none",
        "unix:///run/redis.sock?db=1",
    ],
)
def test_single_server_urls_go_to_redis_py(url: str) -> None:
    spec = parse_url(url)
    assert spec == ConnectionSpec(kind="redis", url=url, tls=url.startswith("rediss"))


def test_cluster_url() -> None:
    spec = parse_url(
        "rediss+cluster://app:p%40ss@10.0.0.1:7000,10.0.0.2,[::1]:7002?socket_timeout=2"
    )
    assert spec.kind == "cluster"
    assert spec.tls
    assert spec.hosts == (("10.0.0.1", 7000), ("10.0.0.2", 6379), ("::1", 7002))
    assert (spec.username, spec.password) == ("app", "p@ss")
    assert spec.options == {"socket_timeout": 2.0}


def test_sentinel_url() -> None:
    spec = parse_url("redis+sentinel://:secret@s1:26380,s2/my%20master/3?sentinel_password=spw")
    assert spec.kind == "sentinel"
    assert spec.hosts == (("s1", 26380), ("s2", 26379))
    assert (spec.username, spec.password) == (None, "secret")
    assert (spec.service_name, spec.db) == ("my master", 3)
    assert spec.options == {"sentinel_password": "spw"}
    assert parse_url("redis+sentinel://s1/svc?db=2").db == 2


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("localhost:6379", "not a Redis URL"),
        ("http://localhost", "unknown scheme 'http'"),
        ("redis+cluster://", "no host given"),
        ("redis+cluster://h:70000", "port of 'h:70000'"),
        ("redis+cluster://h:1/2", "only database 0"),
        ("redis+cluster://h:1?db=1", "only database 0"),
        ("redis+sentinel://h:1", "names the service"),
        ("redis+sentinel://h:1/svc/x", "database 'x' is not a number"),
        ("redis+sentinel://h:1/svc?colour=red", "unknown option 'colour'"),
        ("redis+sentinel://h:1/svc?socket_timeout=soon", "socket_timeout='soon'"),
    ],
)
def test_bad_urls_say_what_is_wrong(url: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_url(url)


def test_password_is_not_echoed_in_errors() -> None:
    with pytest.raises(ValueError) as info:
        parse_url("redis+cluster://app:hunter2@h:99999")
    assert "hunter2" not in str(info.value)


async def test_clients_for_each_form() -> None:
    cluster = connect("redis+cluster://127.0.0.1:7000,127.0.0.1:7001")
    assert isinstance(cluster, RedisCluster)
    assert {(n.host, n.port) for n in cluster.nodes_manager.startup_nodes.values()} == {
        ("127.0.0.1", 7000),
        ("127.0.0.1", 7001),
    }
    sentinel = connect("redis+sentinel://u:pw@127.0.0.1:26379/mymaster/2?sentinel_password=s")
    kwargs = sentinel.connection_pool.connection_kwargs
    assert (kwargs["username"], kwargs["password"], kwargs["db"]) == ("u", "pw", 2)
    assert sentinel.connection_pool.service_name == "mymaster"
    assert (
        sentinel.connection_pool.sentinel_manager.sentinels[0].connection_pool.connection_kwargs[
            "password"
        ]
        == "s"
    )
    for client in (cluster, sentinel):
        assert not RedisStateStore(client).client.get_encoder().decode_responses
        await client.aclose()


def test_decoding_cluster_client_is_refused() -> None:
    client = RedisCluster(host="127.0.0.1", port=7000, decode_responses=True)
    with pytest.raises(StateError, match="decode_responses=False"):
        RedisStateStore(client)


def test_lease_wait_and_replica_wait_fit_the_socket_timeout() -> None:
    store = RedisStateStore.from_url("redis://127.0.0.1:1/0", socket_timeout=2)
    assert store.wait_slice == 1.0
    assert RedisStateStore.from_url("redis://127.0.0.1:1/0").wait_slice == 5.0
    for url in ("redis+cluster://127.0.0.1:1", "redis+sentinel://127.0.0.1:1/m"):
        assert RedisStateStore.from_url(url, socket_timeout=3).wait_slice == 1.5
    with pytest.raises(ValueError, match="replica_timeout=3s must be shorter"):
        RedisStateStore.from_url(
            "redis://127.0.0.1:1/0", socket_timeout=2, min_replicas=1, replica_timeout=3
        )


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("retry_attempts", 0),
        ("retry_timeout", -1),
        ("min_replicas", -1),
        ("replica_timeout", 0),
    ],
)
def test_bad_store_options_are_refused(option: str, value: int) -> None:
    with pytest.raises(ValueError, match=option):
        RedisStateStore.from_url("redis://127.0.0.1:1/0", **{option: value})


# -- real servers -------------------------------------------------------------------------------


async def roundtrip(store: RedisStateStore) -> None:
    async with store.object("Conn", "x") as s:
        s.set("n", (await s.get("n") or 0) + 1)
    async with store.object("Conn", "x", shared=True) as s:
        assert await s.get("n") >= 1


@pytest.fixture(scope="module")
def acl_server() -> Iterator[Server]:
    with running_server("redis") as srv:
        with redis.Redis(port=srv.port) as r:
            r.execute_command("ACL", "SETUSER", "app", "on", ">s3cr%t", "~*", "&*", "+@all")
        yield srv


async def test_acl_user_and_password_in_the_url(acl_server: Server) -> None:
    async with RedisStateStore.from_url(f"redis://app:s3cr%25t@127.0.0.1:{acl_server.port}/0") as s:
        await roundtrip(s)
    bad = RedisStateStore.from_url(f"redis://app:wrong@127.0.0.1:{acl_server.port}/0")
    # a StateError like every error of the library, from redis-py's, and not retried:
    # wrong credentials stay wrong
    with pytest.raises(StoreError, match="refused the credentials") as err:
        async with bad.object("Conn", "x"):
            pass
    assert isinstance(err.value.__cause__, AuthenticationError)
    await bad.aclose()


async def test_unix_socket(tmp_path: Path) -> None:
    sock = tmp_path / "redis.sock"
    srv = start_server_in("redis", tmp_path, "--unixsocket", str(sock), "--unixsocketperm", "700")
    try:
        async with RedisStateStore.from_url(f"unix://{sock}?db=3") as store:
            await roundtrip(store)
        c = aioredis.Redis(port=srv.port, db=3)
        assert await c.hget("restate:{Conn:x}:state", "n") is not None
        await c.aclose()
    finally:
        srv.stop()


def make_cert(directory: Path) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if not openssl:
        unavailable("no openssl to make a test certificate")
    cert, key = directory / "cert.pem", directory / "key.pem"
    args = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"]
    subprocess.run(
        [openssl, *args, "-keyout", key, "-out", cert, "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_tls(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    tls_port = free_port()
    srv = start_server_in(
        "redis",
        tmp_path,
        "--tls-port",
        str(tls_port),
        "--tls-cert-file",
        str(cert),
        "--tls-key-file",
        str(key),
        "--tls-auth-clients",
        "no",
    )
    try:
        url = f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={cert}"
        async with RedisStateStore.from_url(url) as store:
            await roundtrip(store)
            # the store's link, on TLS, closed by the server: the next session opens a new one
            link_id = await store.backend.wire.execute("CLIENT", "ID")
            with redis.Redis(port=srv.port) as admin:
                assert admin.client_kill_filter(_id=link_id) == 1
            await asyncio.sleep(0.1)
            await roundtrip(store)
            assert await store.backend.wire.execute("CLIENT", "ID") != link_id
    finally:
        srv.stop()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://u:hunter2@h:1/0", "redis://u:***@h:1/0"),
        ("redis://hunter2@h", "redis://***@h"),
        ("redis://h/0?password=hunter2&db=1", "redis://h/0?password=***&db=1"),
        (
            "redis+sentinel://h/m?sentinel_password=hunter2&socket_timeout=1",
            "redis+sentinel://h/m?sentinel_password=***&socket_timeout=1",
        ),
        (
            "rediss://h?ssl_keyfile=/k&auth_token=hunter2",
            "rediss://h?ssl_keyfile=/k&auth_token=***",
        ),
        ("redis://h?client_secret=hunter2", "redis://h?client_secret=***"),
        ("redis//:hunter2@host", "redis//:***@host"),
        ("redis://u:p%40ss/hunter2@h/0", "redis://u:***@h/0"),
        ("redis://h:1/0", "redis://h:1/0"),
    ],
)
def test_redact_hides_passwords_and_secret_options(url: str, shown: str) -> None:
    from restate_redis.backend.connection import redact
    from restate_redis.tools.kv import redact_url

    assert redact(url) == shown == redact_url(url)


def test_a_parsed_url_does_not_show_its_secrets() -> None:
    for url in (
        "redis://u:hunter2@h:1/0?password=hunter2",
        "redis+sentinel://u:hunter2@h/m?sentinel_password=hunter2",
        "redis+cluster://u:hunter2@h:1",
    ):
        spec = parse_url(url)
        assert "hunter2" not in repr(spec) and "hunter2" not in spec.redacted_url


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis://h/notadb", "'/notadb' is not a database number"),
        ("redis://:hunter2@h/1/2", "'/1/2' is not a database number"),
        ("rediss://h:6380/x?password=hunter2", "'/x' is not a database number"),
        ("redis://h/0?db=one", "database 'one'"),
        ("unix:///run/redis.sock?db=x&password=hunter2", "database 'x'"),
        ("redis://h:port/0", "cannot read it"),
    ],
)
def test_a_plain_url_with_a_bad_database_is_refused(url: str, why: str) -> None:
    with pytest.raises(ValueError, match=why) as info:
        parse_url(url)
    assert "hunter2" not in str(info.value)
    with pytest.raises(ValueError, match=why):
        RedisStateStore.from_url(url)


def test_secrets_in_options_are_not_echoed_in_errors() -> None:
    for url in (
        "redis+sentinel://h:1/svc?sentinel_password=hunter2&colour=red",
        "redis+cluster://h:1?sentinel_password=hunter2&socket_timeout=soon",
        "http://u:hunter2@h/?password=hunter2",
        "h:1?password=hunter2",
    ):
        with pytest.raises(ValueError) as info:
            parse_url(url)
        assert "hunter2" not in str(info.value), url
