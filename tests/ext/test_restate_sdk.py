"""restate-sdk handlers with ``@store.restate_state()``, run by a real Restate server.

Every invocation goes through the Restate ingress (HTTP); assertions read Redis. The services
are in tests/restate_app.py; each test runs for the eager, lazy and preload variants.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import msgpack
import pytest
import redis.asyncio as aioredis

from restate_redis import Keyspace, RedisStateStore
from restate_redis.keyspace import EMPTY_GRACE_SECONDS, commit_tag
from tests.support.keys import meta_of, state_fields
from tests.support.restate_server import RestateStack, start_stack
from tests.support.servers import Server

NAMESPACE = "rrt"
MODES = ["eager", "lazy", "preload"]
keyspace = Keyspace(NAMESPACE)


@pytest.fixture(scope="module")
def stack(redis_server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestateStack]:
    env = {
        "RESTATE_REDIS_URL": redis_server.url,
        "RESTATE_REDIS_NAMESPACE": NAMESPACE,
        "RR_TEST_RETENTION": "1.5",
    }
    # No connection recycling here (hypercorn's default closes one after 1,000 requests and an
    # invocation cut off by it waits a minute): these tests count attempts exactly.
    config = tmp_path_factory.mktemp("hypercorn") / "hypercorn.toml"
    config.write_text("keep_alive_max_requests = 1000000000\n")
    s = start_stack("tests.support.restate_app:app", env, ("--config", str(config)))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def churning_stack(
    redis_server: Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RestateStack]:
    """hypercorn closing each connection after 20 requests (its default is 1,000), cutting
    off invocations in flight; Restate retries them after a 2 s inactivity timeout."""
    config = tmp_path_factory.mktemp("hypercorn") / "hypercorn.toml"
    config.write_text("keep_alive_max_requests = 20\n")
    env = {"RESTATE_REDIS_URL": redis_server.url, "RESTATE_REDIS_NAMESPACE": NAMESPACE}
    server_env = {"RESTATE_WORKER__INVOKER__INACTIVITY_TIMEOUT": "2s"}
    s = start_stack("tests.support.restate_app:app", env, ("--config", str(config)), server_env)
    yield s
    s.stop()


@pytest.fixture
async def r(redis_server: Server) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis.from_url(redis_server.url)
    yield c
    await c.aclose()


@pytest.fixture
async def ingress(stack: RestateStack) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=stack.ingress, timeout=60, limits=limits) as c:
        yield c


def new_key() -> str:
    return f"k-{uuid.uuid4().hex[:12]}"


async def call(ingress: httpx.AsyncClient, path: str, body: Any = None) -> Any:
    resp = await ingress.post(path, json=body)
    assert resp.status_code == 200, f"{path}: {resp.status_code} {resp.text}"
    return resp.json() if resp.content else None  # the SDK answers None with an empty body


async def stored(r: aioredis.Redis, service: str, key: str) -> dict[str, Any]:
    """What Redis holds for one object, decoded with the store's default serde."""
    raw = await r.hgetall(keyspace.object_keys(service, key).state)
    return {f.decode(): msgpack.unpackb(v) for f, v in state_fields(raw).items()}


async def attempts(r: aioredis.Redis, tag: str, invocation_id: str) -> int:
    return int(await r.get(f"rrtest:{tag}:{invocation_id}") or 0)


@pytest.mark.parametrize("mode", MODES)
async def test_concurrent_increments_are_exact(
    mode: str, ingress: httpx.AsyncClient, r: aioredis.Redis
) -> None:
    service, keys, per_key = f"Counter_{mode}", [new_key() for _ in range(4)], 20
    jobs = [(k, i) for i in range(per_key) for k in keys]  # 80 invocations, interleaved
    results = await asyncio.gather(*(call(ingress, f"/{service}/{k}/add", 1) for k, _ in jobs))
    for key in keys:
        seen = sorted(res for (k, _), res in zip(jobs, results, strict=True) if k == key)
        assert seen == list(range(1, per_key + 1))  # each increment saw the one before it
        assert await stored(r, service, key) == {"count": per_key, "last": 1}
        assert await call(ingress, f"/{service}/{key}/get") == per_key  # a shared handler
        assert not await r.exists(keyspace.object_keys(service, key).lease)


async def test_increments_stay_exact_while_hypercorn_cuts_connections(
    churning_stack: RestateStack, r: aioredis.Redis
) -> None:
    service, keys, per_key = "Counter_lazy", [new_key() for _ in range(3)], 60  # 9 cuts or so
    await r.delete(f"rrtest:add-attempts:{service}", f"rrtest:add-replays:{service}")
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    async with httpx.AsyncClient(base_url=churning_stack.ingress, timeout=90, limits=limits) as c:
        jobs = [k for _ in range(per_key) for k in keys]
        results = await asyncio.gather(*(call(c, f"/{service}/{k}/add", 1) for k in jobs))
    for key in keys:
        assert sorted(v for k, v in zip(jobs, results, strict=True) if k == key) == list(
            range(1, per_key + 1)
        )
        assert await stored(r, service, key) == {"count": per_key, "last": 1}
    tries = int(await r.get(f"rrtest:add-attempts:{service}") or 0)
    replays = int(await r.get(f"rrtest:add-replays:{service}") or 0)
    print(f"{len(jobs)} invocations, {tries} attempts, {replays} replays of applied commits")
    assert tries > len(jobs)  # connections were cut and invocations retried


@pytest.mark.parametrize("mode", MODES)
async def test_failing_before_the_commit_twice_applies_once(
    mode: str, ingress: httpx.AsyncClient, r: aioredis.Redis
) -> None:
    service, key = f"Counter_{mode}", new_key()
    await call(ingress, f"/{service}/{key}/add", 10)
    resp = await ingress.post(f"/{service}/{key}/add_fail_twice", json=5)
    assert resp.status_code == 200 and resp.json() == 15
    assert await attempts(r, "fail-before", resp.headers["x-restate-id"]) == 3
    assert await stored(r, service, key) == {"count": 15, "last": 5}


@pytest.mark.parametrize("mode", MODES)
async def test_failing_after_the_commit_twice_applies_once_and_returns_the_same(
    mode: str, ingress: httpx.AsyncClient, r: aioredis.Redis
) -> None:
    service, key = f"Counter_{mode}", new_key()
    await call(ingress, f"/{service}/{key}/add", 10)
    resp = await ingress.post(f"/{service}/{key}/add_then_fail", json=5)
    assert resp.status_code == 200 and resp.json() == 15
    inv = resp.headers["x-restate-id"]
    assert await attempts(r, "after-fail", inv) == 3
    # Both cut-off attempts had computed what the third returned: the replays saw the state
    # from before the first commit, and the repeated commits were not applied.
    assert await r.lrange(f"rrtest:results:{inv}", 0, -1) == [b"15", b"15"]
    assert await stored(r, service, key) == {"count": 15, "last": 5}
    meta = meta_of(await r.hgetall(keyspace.object_keys(service, key).state))
    assert meta.commit == commit_tag(inv) and meta.version == 2  # two commits: add, add_then_fail


@pytest.mark.parametrize("mode", MODES)
async def test_crash_after_the_commit_applies_once_and_returns_the_same(
    mode: str, stack: RestateStack, ingress: httpx.AsyncClient, r: aioredis.Redis
) -> None:
    service, key = f"Counter_{mode}", new_key()
    restarts = stack.deployment.restarts
    await call(ingress, f"/{service}/{key}/add", 10)
    # The first attempt commits, then its worker process is SIGKILLed: every connection to
    # Restate drops, the deployment restarts and Restate retries the invocation.
    resp = await ingress.post(f"/{service}/{key}/add_then_crash", json=5)
    assert resp.status_code == 200 and resp.json() == 15
    inv = resp.headers["x-restate-id"]
    stack.deployment.wait_restarts(restarts + 1)
    assert await attempts(r, "after-crash", inv) == 2
    assert await r.lrange(f"rrtest:results:{inv}", 0, -1) == [b"15"]
    assert await stored(r, service, key) == {"count": 15, "last": 5}
    assert await call(ingress, f"/{service}/{key}/add", 1) == 16


async def test_a_workflow_run_cut_after_its_commit_completes_once(
    stack: RestateStack, ingress: httpx.AsyncClient, r: aioredis.Redis
) -> None:
    # The retry opens a run session on a workflow already completed by its own commit id:
    # it replays the view from before that commit instead of being refused.
    wf_id, restarts = new_key(), stack.deployment.restarts
    resp = await ingress.post(f"/FlowCrash/{wf_id}/run", json="ann")
    assert resp.status_code == 200 and resp.json() == "ann run 1"
    stack.deployment.wait_restarts(restarts + 1)
    inv = resp.headers["x-restate-id"]
    assert await attempts(r, "after-crash", inv) == 2
    assert await r.lrange(f"rrtest:results:{inv}", 0, -1) == [b"'ann run 1'"]
    assert await stored(r, "FlowCrash", wf_id) == {"name": "ann", "runs": 1}
    keys = keyspace.object_keys("FlowCrash", wf_id)
    assert meta_of(await r.hgetall(keys.state)).workflow == "completed"
    assert 0 < await r.pttl(keys.state) <= 300_000


@pytest.mark.parametrize("mode", MODES)
async def test_crash_inside_the_session_retry_takes_over_its_lease(
    mode: str, stack: RestateStack, ingress: httpx.AsyncClient, r: aioredis.Redis
) -> None:
    # The killed attempt holds the lease (lease_ttl 120 s in the app); the request timeout is
    # 60 s, so only a retry that re-enters its own lease can answer.
    service, key = f"Counter_{mode}", new_key()
    restarts = stack.deployment.restarts
    await call(ingress, f"/{service}/{key}/add", 10)
    resp = await ingress.post(f"/{service}/{key}/add_crash_in_session", json=5)
    assert resp.status_code == 200 and resp.json() == 15
    stack.deployment.wait_restarts(restarts + 1)
    assert await attempts(r, "crash-in-session", resp.headers["x-restate-id"]) == 2
    assert await stored(r, service, key) == {"count": 15, "last": 5}
    assert not await r.exists(keyspace.object_keys(service, key).lease)


@pytest.mark.parametrize("mode", MODES)
async def test_terminal_error_writes_nothing(
    mode: str, ingress: httpx.AsyncClient, r: aioredis.Redis
) -> None:
    service, key = f"Counter_{mode}", new_key()
    await call(ingress, f"/{service}/{key}/add", 10)
    before = await r.hgetall(keyspace.object_keys(service, key).state)  # with its bookkeeping
    resp = await ingress.post(f"/{service}/{key}/add_then_terminal", json=5)
    assert resp.status_code == 422 and resp.json()["message"] == "refused"
    assert await stored(r, service, key) == {"count": 10, "last": 10}
    assert await r.hgetall(keyspace.object_keys(service, key).state) == before
    assert not await r.exists(keyspace.object_keys(service, key).lease)


@pytest.mark.parametrize("mode", MODES)
async def test_a_write_in_a_shared_handler_fails_at_once(
    mode: str, ingress: httpx.AsyncClient, r: aioredis.Redis
) -> None:
    # Restate retries ordinary exceptions forever: an answer at all means it was terminal.
    service, key = f"Counter_{mode}", new_key()
    await call(ingress, f"/{service}/{key}/add", 10)
    resp = await ingress.post(f"/{service}/{key}/write_in_shared", json=99)
    assert resp.status_code == 500
    message = resp.json()["message"]
    assert f"shared handler {service}/write_in_shared" in message
    assert "can only read" in message and repr(key) in message
    assert await stored(r, service, key) == {"count": 10, "last": 10}


@pytest.mark.parametrize("mode", MODES)
async def test_set_clear_clear_all_and_state_keys(
    mode: str, ingress: httpx.AsyncClient, r: aioredis.Redis
) -> None:
    service, key = f"Counter_{mode}", new_key()
    ops: list[list[Any]] = [["set", "a", 1], ["set", "b", {"x": [1, 2]}], ["clear", "a"]]
    assert await call(ingress, f"/{service}/{key}/edit", ops) == ["b"]
    assert await stored(r, service, key) == {"b": {"x": [1, 2]}}
    await call(ingress, f"/{service}/{key}/add", 3)
    assert await call(ingress, f"/{service}/{key}/keys") == ["b", "count", "last"]
    ops = [["clear_all"], ["set", "c", "z"]]
    assert await call(ingress, f"/{service}/{key}/edit", ops) == ["c"]
    assert await stored(r, service, key) == {"c": "z"}
    assert await call(ingress, f"/{service}/{key}/get") == 0


async def test_a_state_key_ttl_reaches_the_server_and_redis_7_0_refuses_it_terminally(
    ingress: httpx.AsyncClient, r: aioredis.Redis
) -> None:
    """The integration's ctx.set passes ttl= on; Redis 7.0 (the stack's server) has no
    hash-field expiry: the invocation ends at once (a retry cannot cure it), nothing stored."""
    service, key = "Counter_eager", new_key()
    resp = await ingress.post(f"/{service}/{key}/edit", json=[["set", "a", 1], ["set", "t", 2, 60]])
    assert resp.status_code == 500
    message = resp.json()["message"]
    assert f"exclusive handler {service}/edit" in message
    assert "Redis 7.0." in message and "no hash-field expiry" in message
    assert await stored(r, service, key) == {}


@pytest.mark.parametrize("server", ["valkey"], indirect=True)  # (Redis 7.0: the test above)
async def test_the_integration_context_gives_a_state_key_its_ttl(server: Server) -> None:
    """On Valkey 9 the key set through the integration's context gets its own expiry."""
    from restate_redis.ext.restate_sdk import RestateStateContext

    async with RedisStateStore.from_url(server.url, namespace=NAMESPACE) as store:
        async with store.object("Cart", "ttl") as session:
            ctx = RestateStateContext(None, session)
            ctx.set("token", "abc", ttl=60)
            ctx.set("plain", 1)
        keys = keyspace.object_keys("Cart", "ttl")
        left = await store.client.execute_command(
            "HPTTL", keys.state, "FIELDS", 2, "token", "plain"
        )
        assert 0 < left[0] <= 60_000 and left[1] == -1
        await store.purge("Cart", "ttl")


@pytest.mark.parametrize("mode", MODES)
async def test_workflow_state_is_per_id_and_expires_after_retention(
    mode: str, ingress: httpx.AsyncClient, r: aioredis.Redis
) -> None:
    service, wf_id, other = f"Flow_{mode}", new_key(), new_key()
    assert await call(ingress, f"/{service}/{wf_id}/run", "ann") == "hello ann"
    assert await call(ingress, f"/{service}/{wf_id}/status") == "done"
    assert await call(ingress, f"/{service}/{wf_id}/finished") == "hello ann"  # a promise
    assert await call(ingress, f"/{service}/{other}/status") is None
    keys = keyspace.object_keys(service, wf_id)
    assert await stored(r, service, wf_id) == {"name": "ann", "status": "done"}
    assert meta_of(await r.hgetall(keys.state)).workflow == "completed"
    assert 0 < await r.pttl(keys.state) <= 1500  # the state and its bookkeeping, one hash
    deadline = time.monotonic() + 20
    while await r.exists(keys.state, keys.old):
        assert time.monotonic() < deadline, "the workflow's keys did not expire"
        await asyncio.sleep(0.1)
    assert await call(ingress, f"/{service}/{wf_id}/status") is None


@pytest.mark.parametrize("mode", MODES)
async def test_the_sdk_default_serde_means_the_store_serde_and_others_are_used_as_given(
    mode: str, ingress: httpx.AsyncClient, r: aioredis.Redis
) -> None:
    service, key = f"Counter_{mode}", new_key()
    first = await call(ingress, f"/{service}/{key}/profile", "ann")
    assert first == {"visits": 1, "json": {"name": "ann"}, "is": "Profile"}
    assert (await call(ingress, f"/{service}/{key}/profile", "ann"))["visits"] == 2
    state = keyspace.object_keys(service, key).state
    assert msgpack.unpackb(await r.hget(state, "profile")) == {"name": "ann", "visits": 2}
    assert await r.hget(state, "json") == b'{"name": "ann"}'  # the SDK's JsonSerde bytes


async def test_the_decorator_also_works_above_the_sdk_decorator(
    ingress: httpx.AsyncClient, r: aioredis.Redis
) -> None:
    key = new_key()
    assert await call(ingress, f"/Counter_eager/{key}/add_reversed", 4) == 4
    assert await call(ingress, f"/Counter_eager/{key}/add", 1) == 5
    assert await stored(r, "Counter_eager", key) == {"count": 5, "last": 1}


async def test_decorator_and_service_switch_reject_what_they_cannot_handle() -> None:
    import restate

    store = RedisStateStore(aioredis.Redis())
    with pytest.raises(TypeError, match="async def"):
        store.restate_state()(lambda ctx: None)
    with pytest.raises(TypeError, match="plain Service"):
        store.restate_state()(restate.Service("Plain"))
    with pytest.raises(TypeError, match="state_preload"):
        store.restate_state(state_preload="count")
    with pytest.raises(ValueError, match="workflow_retention"):
        store.restate_state(workflow_retention=-1)
    await store.aclose()


async def test_the_example_service_answers_through_restate(
    redis_server: Server, r: aioredis.Redis
) -> None:
    """examples/service.py, as the README runs it: Counter, NativeCounter and Signup."""
    env = {"RESTATE_REDIS_URL": redis_server.url, "RESTATE_REDIS_NAMESPACE": "example"}
    example = start_stack("examples.service:app", env)
    try:
        async with httpx.AsyncClient(base_url=example.ingress, timeout=60) as c:
            key, email = new_key(), f"{new_key()}@example.com"
            assert await call(c, f"/Counter/{key}/add", 5) == 5
            assert await call(c, f"/Counter/{key}/add", 2) == 7
            assert await call(c, f"/Counter/{key}/get") == 7
            assert await call(c, f"/NativeCounter/{key}/add", 3) == 3
            sent = await c.post(f"/Signup/{email}/run/send", json=email)
            assert sent.status_code in (200, 202), sent.text
            assert await call(c, f"/Signup/{email}/status") == {
                "email": None,
                "user_id": None,
                "status": None,
            }
            await call(c, f"/Signup/{email}/confirm", True)
            attached = await c.get(f"/restate/workflow/Signup/{email}/attach")
            assert attached.status_code == 200 and attached.json() == "active"
            status = await call(c, f"/Signup/{email}/status")
            assert status["email"] == email and status["status"] == "active"
            assert status["user_id"].startswith("user-")
            await call(c, f"/Counter/{key}/reset")
            assert await call(c, f"/Counter/{key}/get") == 0
        example_keys = Keyspace("example")
        # reset left no state: only the bookkeeping, which ends after the grace period
        counter = example_keys.object_keys("Counter", key).state
        fields = await r.hgetall(counter)
        assert state_fields(fields) == {} and meta_of(fields).fading
        assert 0 < await r.pttl(counter) <= EMPTY_GRACE_SECONDS * 1000
        assert await r.exists(example_keys.object_keys("Signup", email).state)
        assert not await r.exists(example_keys.object_keys("NativeCounter", key).state)
    finally:
        example.stop()
