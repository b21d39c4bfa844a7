"""Spans and metrics of state access, read back from the OpenTelemetry SDK's in-memory exporters.

Each test passes its own providers to the store, so no test touches the global ones.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from inspect import signature
from typing import Any

import msgpack
import pytest
import redis.asyncio as aioredis
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from restate_redis import (
    LeaseLostError,
    LeaseTimeoutError,
    RedisStateStore,
    StoreUnavailableError,
    WrongTypeError,
)
from restate_redis.ext import otel as tm
from tests.support.servers import Server, free_port


class Otel:
    """An SDK tracer and meter provider with in-memory exporters."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.tracer = self.tracer_provider.get_tracer("tests")

    def spans(self) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if s.kind == SpanKind.CLIENT]

    def points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        found = []
        for rm in data.resource_metrics if data else []:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name == name:
                        found.extend(metric.data.data_points)
        return found

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


@pytest.fixture
def otel() -> Iterator[Otel]:
    o = Otel()
    yield o
    o.shutdown()


@pytest.fixture
async def traced_store(client: aioredis.Redis, otel: Otel) -> AsyncIterator[RedisStateStore]:
    s = RedisStateStore(
        client,
        lease_ttl=5,
        acquire_timeout=10,
        tracer_provider=otel.tracer_provider,
        meter_provider=otel.meter_provider,
    )
    yield s
    await s.aclose()


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def enc(value: Any) -> bytes:
    return bytes(msgpack.packb(value))


async def test_eager_session_spans_nest_under_the_handler(
    traced_store: RedisStateStore, otel: Otel, server: Server
) -> None:
    with otel.tracer.start_as_current_span("handler") as handler:
        async with traced_store.object("Counter", "alice") as s:
            s.set("count", 41)
            s.set("name", "secret-value-xyz")
    open_, commit = otel.spans()
    assert open_.name == "EVALSHA restate_redis.open"
    assert commit.name == "EVALSHA restate_redis.commit"
    for span in (open_, commit):
        assert span.kind == SpanKind.CLIENT
        assert span.parent is not None
        assert span.parent.span_id == handler.get_span_context().span_id
        assert span.context.trace_id == handler.get_span_context().trace_id
        assert span.status.status_code == StatusCode.UNSET
        a = attrs(span)
        assert a["db.system.name"] == "redis"
        assert a["db.operation.name"] == "EVALSHA"
        assert a["db.namespace"] == "0"
        assert a["server.address"] == "127.0.0.1"
        assert a["server.port"] == server.port
        assert a[tm.SERVICE] == "Counter"
        assert a[tm.OBJECT_KEY] == "alice"
        assert a[tm.MODE] == "eager"
        assert a[tm.SHARED] is False
        assert a[tm.OUTCOME] == "ok"
        # values never go into spans
        assert not any("secret-value-xyz" in str(v) for v in a.values())
    assert attrs(open_)["db.stored_procedure.name"] == "restate_redis.open"
    assert attrs(open_)[tm.OPERATION] == "open"
    assert attrs(open_)[tm.KEYS] == 0
    assert attrs(open_)[tm.VERSION] == 0
    assert attrs(open_)[tm.LEASE_WAIT] == 0.0  # the lease was free
    c = attrs(commit)
    assert c["db.stored_procedure.name"] == "restate_redis.commit"
    assert c[tm.KEYS] == 2
    assert c[tm.BYTES_WRITTEN] == len(enc(41)) + len(enc("secret-value-xyz"))
    assert c[tm.VERSION] == 1
    assert commit.end_time is not None and open_.end_time is not None
    assert open_.end_time <= commit.start_time

    # a second session (on a store without the snapshot) reads both keys eagerly: keys and
    # bytes read
    otel.exporter.clear()
    assert traced_store.snapshots is not None
    traced_store.snapshots.clear()
    async with traced_store.object("Counter", "alice", shared=True) as s:
        assert await s.get("count") == 41
    (open2,) = otel.spans()
    a = attrs(open2)
    assert a[tm.KEYS] == 2
    assert a[tm.BYTES_READ] == len(enc(41)) + len(enc("secret-value-xyz"))
    assert a[tm.SHARED] is True
    assert tm.LEASE_WAIT not in a  # shared sessions take no lease

    # the next one finds that snapshot current: nothing read
    otel.exporter.clear()
    async with traced_store.object("Counter", "alice", shared=True) as s:
        assert await s.get("count") == 41
    (open3,) = otel.spans()
    assert attrs(open3)[tm.MODE] == "cached"
    assert (attrs(open3)[tm.KEYS], attrs(open3).get(tm.BYTES_READ, 0)) == (0, 0)


async def test_lazy_get_keys_and_get_all_spans(
    traced_store: RedisStateStore, otel: Otel, server: Server
) -> None:
    async with traced_store.object("Cart", "bob") as s:
        s.set("items", ["apple", "pear"])
        s.set("total", 12)
    otel.exporter.clear()
    assert traced_store.snapshots is not None
    traced_store.snapshots.clear()  # else the open finds the committed snapshot current
    async with traced_store.object("Cart", "bob", state_preload=False, lease_on_enter=True) as s:
        assert await s.get("items") == ["apple", "pear"]
        assert await s.get("missing") is None
        assert await s.state_keys() == ["items", "total"]
        assert await s.get_all() == {"items": ["apple", "pear"], "total": 12}
    await traced_store.backend.settle()  # the release is not waited for
    names = [sp.name for sp in otel.spans()]
    target = f"127.0.0.1:{server.port}"
    assert names == [
        "EVALSHA restate_redis.open",
        f"HGET {target}",
        f"HGET {target}",
        "EVALSHA restate_redis.scan",
        "EVALSHA restate_redis.scan",
        "EVALSHA restate_redis.release",
    ]
    open_, get1, get2, keys, get_all, release = otel.spans()
    assert attrs(open_)[tm.MODE] == "lazy"
    g = attrs(get1)
    assert g["db.operation.name"] == "HGET"
    assert "db.stored_procedure.name" not in g
    assert g[tm.OPERATION] == "get"
    assert g[tm.STATE_KEY] == "items"
    assert g[tm.KEYS] == 1
    assert g[tm.BYTES_READ] == len(enc(["apple", "pear"]))
    assert attrs(get2)[tm.STATE_KEY] == "missing"
    assert attrs(get2)[tm.KEYS] == 0
    assert tm.BYTES_READ not in attrs(get2)
    assert attrs(keys)[tm.OPERATION] == "keys"
    assert attrs(keys)[tm.KEYS] == 2
    assert tm.STATE_KEY not in attrs(keys)
    assert attrs(get_all)["db.operation.name"] == "EVALSHA"
    assert attrs(get_all)[tm.OPERATION] == "all"
    assert attrs(get_all)[tm.BYTES_READ] == len(enc(["apple", "pear"])) + len(enc(12))
    assert attrs(release)[tm.OPERATION] == "release"

    # preload: the open reads the listed keys only
    otel.exporter.clear()
    async with traced_store.object("Cart", "bob", state_preload=["total", "nope"]) as s:
        assert await s.get("total") == 12
    a = attrs(otel.spans()[0])
    assert a[tm.MODE] == "preload"
    assert a[tm.KEYS] == 1
    assert a[tm.BYTES_READ] == len(enc(12))


async def test_lease_wait_conflict_and_metrics(
    client: aioredis.Redis, traced_store: RedisStateStore, otel: Otel
) -> None:
    holder = traced_store.object("Counter", "hot")
    await holder.__aenter__()
    waiter_entered = asyncio.Event()

    async def wait_for_it() -> None:
        async with traced_store.object("Counter", "hot") as s:
            waiter_entered.set()
            s.set("n", 1)

    task = asyncio.create_task(wait_for_it())
    # the waiter is blocked once its first open found the lease held
    deadline = asyncio.get_running_loop().time() + 10
    while not any(attrs(s).get(tm.OUTCOME) == "lease_busy" for s in otel.spans()):
        assert asyncio.get_running_loop().time() < deadline, "the waiter never tried the lease"
        await asyncio.sleep(0.01)
    assert not waiter_entered.is_set()
    holder.set("n", 0)
    await holder.__aexit__(None, None, None)
    await asyncio.wait_for(task, 10)

    opens = [s for s in otel.spans() if attrs(s)[tm.OPERATION] == "open"]
    busy = [s for s in opens if attrs(s)[tm.OUTCOME] == "lease_busy"]
    got = [s for s in opens if attrs(s)[tm.OUTCOME] == "ok"]
    assert len(busy) >= 1 and len(got) == 2
    assert all(s.status.status_code == StatusCode.UNSET for s in busy)  # waiting is no error
    waits = [s for s in otel.spans() if attrs(s)[tm.OPERATION] == "wait"]
    assert waits and waits[0].name.startswith("BLPOP ")
    assert attrs(waits[-1])[tm.WOKEN] is True  # the holder's release woke the waiter
    waited = attrs(got[-1])[tm.LEASE_WAIT]
    assert waited > 0

    base = {tm.SERVICE: "Counter", tm.MODE: "eager"}
    (conflicts,) = otel.points("restate_redis.lease.conflicts")
    assert conflicts.attributes == {**base, tm.OUTCOME: "lease_busy"}
    assert conflicts.value == len(busy)
    commits = otel.points("restate_redis.commits")
    assert [(p.attributes, p.value) for p in commits] == [({**base, tm.OUTCOME: "ok"}, 2)]
    (commit_hist,) = otel.points("restate_redis.commit.duration")
    assert commit_hist.count == 2
    loads = {p.attributes[tm.OUTCOME]: p.count for p in otel.points("restate_redis.load.duration")}
    assert loads == {"ok": 2, "lease_busy": len(busy)}
    (wait_hist,) = otel.points("restate_redis.lease.wait")
    assert wait_hist.count == 2
    assert wait_hist.max == pytest.approx(waited)
    (written,) = otel.points("restate_redis.bytes.written")
    assert written.value == 2 * len(enc(1))
    for name in ("restate_redis.commits", "restate_redis.load.duration"):
        for p in otel.points(name):
            assert set(p.attributes) == {tm.SERVICE, tm.MODE, tm.OUTCOME}  # low cardinality


async def test_lease_timeout_and_lost_lease(
    client: aioredis.Redis, otel: Otel, traced_store: RedisStateStore
) -> None:
    impatient = RedisStateStore(
        client,
        acquire_timeout=0,
        tracer_provider=otel.tracer_provider,
        meter_provider=otel.meter_provider,
    )
    async with traced_store.object("Counter", "busy"):
        with pytest.raises(LeaseTimeoutError):
            async with impatient.object("Counter", "busy"):
                pass
    (timeouts,) = otel.points("restate_redis.lease.timeouts")
    assert timeouts.value == 1
    assert timeouts.attributes == {tm.SERVICE: "Counter", tm.MODE: "eager"}

    otel.exporter.clear()
    with pytest.raises(LeaseLostError):
        async with traced_store.object("Counter", "gone") as s:
            s.set("n", 1)
            await client.delete(s.keys.lease)  # the lease expires behind the session's back
    commit = otel.spans()[-1]
    assert commit.name == "EVALSHA restate_redis.commit"
    assert attrs(commit)[tm.OUTCOME] == "lease_lost"
    assert attrs(commit)["error.type"] == "lease_lost"
    assert commit.status.status_code == StatusCode.ERROR
    (lost,) = otel.points("restate_redis.lease.lost")
    assert lost.value == 1
    assert await client.exists(s.keys.state) == 0  # and nothing was written


async def test_errors_set_status_and_record_the_exception(
    client: aioredis.Redis, otel: Otel
) -> None:
    await client.set("restate:{Counter:typed}:state", "not a hash")
    store = RedisStateStore(
        client, tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider
    )
    with pytest.raises(WrongTypeError):
        async with store.object("Counter", "typed"):
            pass
    (span,) = otel.spans()
    assert attrs(span)[tm.OUTCOME] == "wrong_type"
    assert span.status.status_code == StatusCode.ERROR

    # a Redis error reply: its prefix is the response status code
    otel.exporter.clear()
    with pytest.raises(WrongTypeError):
        async with store.object(
            "Counter", "retyped", state_preload=False, lease_on_enter=True
        ) as s:
            await client.delete(s.keys.state)
            await client.rpush(s.keys.state, "x")  # the hash became a list behind its back
            await s.get("count")
    get = next(sp for sp in otel.spans() if attrs(sp)[tm.OPERATION] == "get")
    assert get.status.status_code == StatusCode.ERROR
    assert attrs(get)["db.response.status_code"] == "WRONGTYPE"
    assert attrs(get)["error.type"] == "redis.exceptions.ResponseError"
    assert attrs(get)[tm.STATE_KEY] == "count"

    # a connection refused: the exception is recorded on the span
    otel.exporter.clear()
    # no retries inside redis-py (it backs off for seconds by default)
    dead = aioredis.Redis(port=free_port(), socket_connect_timeout=2, retry=Retry(NoBackoff(), 0))
    # where the store retries transient errors, two attempts: one span each, one retry counted
    retries = (
        {"retry_attempts": 2} if "retry_attempts" in signature(RedisStateStore).parameters else {}
    )
    down = RedisStateStore(
        dead, tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider, **retries
    )
    with (
        otel.tracer.start_as_current_span("handler"),
        pytest.raises((RedisConnectionError, StoreUnavailableError)),
    ):
        async with down.object("Counter", "alice"):
            pass
    spans = otel.spans()
    assert len(spans) == (2 if retries else 1)
    if retries:
        (retried,) = otel.points("restate_redis.retries")
        assert retried.value == 1
        assert retried.attributes == {tm.SERVICE: "Counter", tm.OPERATION: "open"}
    for span in spans:
        assert span.name == "EVALSHA restate_redis.open"
        assert span.status.status_code == StatusCode.ERROR
        assert attrs(span)["error.type"] == "redis.exceptions.ConnectionError"
        assert attrs(span)[tm.OUTCOME] == "error"
        (event,) = [e for e in span.events if e.name == "exception"]
        assert event.attributes is not None
        assert event.attributes["exception.type"] == "redis.exceptions.ConnectionError"
    errors = otel.points("restate_redis.load.duration")
    assert {p.attributes[tm.OUTCOME] for p in errors} == {"wrong_type", "ok", "error"}
    await dead.aclose()


@pytest.mark.parametrize("mode", ["hash", "omit"])
async def test_object_key_hashed_or_omitted(
    client: aioredis.Redis, otel: Otel, mode: tm.ObjectKeyMode
) -> None:
    store = RedisStateStore(
        client,
        trace_object_key=mode,
        tracer_provider=otel.tracer_provider,
        meter_provider=otel.meter_provider,
    )
    email = "jane.doe@example.com"
    async with store.workflow("Signup", email) as s:
        s.set("step", 1)
    spans = otel.spans()
    assert spans
    for span in spans:
        a = attrs(span)
        assert tm.OBJECT_KEY not in a
        assert not any(email in str(v) for v in a.values())
        if mode == "hash":
            assert a[tm.WORKFLOW_ID] == store.telemetry.key_attribute(email)
            assert str(a[tm.WORKFLOW_ID]).startswith("sha256:")
            assert len(str(a[tm.WORKFLOW_ID])) == len("sha256:") + 16
        else:
            assert tm.WORKFLOW_ID not in a

    # an error that names the key does not leak it through the recorded exception
    otel.exporter.clear()
    async with store.object("Users", email, shared=True) as s:

        async def failing() -> None:
            raise RuntimeError(f"cannot read {email}")

        with pytest.raises(RuntimeError):
            await store.telemetry.traced("get", s.record, failing)
    (span,) = [sp for sp in otel.spans() if attrs(sp)[tm.OPERATION] == "get"]
    (event,) = span.events
    assert event.attributes is not None
    for value in [*event.attributes.values(), span.status.description]:
        assert email not in str(value)
    with pytest.raises(ValueError, match="trace_object_key"):
        RedisStateStore(client, trace_object_key="md5")  # type: ignore[arg-type]


async def test_a_repeated_commit_id_is_not_counted_as_written(
    traced_store: RedisStateStore, otel: Otel
) -> None:
    for _ in range(2):  # the same invocation twice, as after a retry
        async with traced_store.object("Counter", "once", commit_id="inv-7") as s:
            s.set("n", 1)
    first, second = [sp for sp in otel.spans() if attrs(sp)[tm.OPERATION] == "commit"]
    assert attrs(first)[tm.OUTCOME] == "ok"
    assert attrs(second)[tm.OUTCOME] == "already_applied"
    assert attrs(second)[tm.COMMIT_ID] == "inv-7"
    assert second.status.status_code == StatusCode.UNSET
    outcomes = {p.attributes[tm.OUTCOME]: p.value for p in otel.points("restate_redis.commits")}
    assert outcomes == {"ok": 1, "already_applied": 1}
    (written,) = otel.points("restate_redis.bytes.written")
    assert written.value == len(enc(1))


async def test_a_commit_waiting_for_replicas_is_a_pipeline(
    client: aioredis.Redis, otel: Otel
) -> None:
    from restate_redis import ReplicationError

    store = RedisStateStore(
        client,
        min_replicas=1,
        replica_timeout=0.1,
        tracer_provider=otel.tracer_provider,
        meter_provider=otel.meter_provider,
    )
    with pytest.raises(ReplicationError):  # no replica confirms it: the server has none
        async with store.object("Counter", "durable") as s:
            s.set("n", 1)
    commit = otel.spans()[-1]
    assert commit.name == "PIPELINE restate_redis.commit"
    a = attrs(commit)
    assert a["db.operation.name"] == "PIPELINE"
    assert a["db.operation.batch.size"] == 2
    assert a["error.type"] == "restate_redis.errors.ReplicationError"
    assert commit.status.status_code == StatusCode.ERROR


async def test_retries_are_counted(traced_store: RedisStateStore, otel: Otel) -> None:
    async with traced_store.object("Counter", "r", shared=True) as s:
        traced_store.telemetry.record_retry("get", s.record)
        traced_store.telemetry.record_retry("get", s.record)
    (retries,) = otel.points("restate_redis.retries")
    assert retries.value == 2
    assert retries.attributes == {tm.SERVICE: "Counter", tm.OPERATION: "get"}


async def test_the_span_is_current_during_the_round_trip(
    traced_store: RedisStateStore, otel: Otel
) -> None:
    seen: list[trace.Span] = []

    async def call() -> None:
        seen.append(trace.get_current_span())

    async with traced_store.object("Counter", "c", shared=True) as s:
        await traced_store.telemetry.traced("get", s.record, call)
    get = next(sp for sp in otel.spans() if attrs(sp)[tm.OPERATION] == "get")
    assert seen[0].get_span_context().span_id == get.context.span_id
    assert trace.get_current_span() is trace.INVALID_SPAN  # detached afterwards


async def test_spans_join_the_trace_restate_sent(traced_store: RedisStateStore, otel: Otel) -> None:
    from opentelemetry.propagate import inject

    headers: dict[str, str] = {}
    with otel.tracer.start_as_current_span("restate invocation") as remote:
        inject(headers)  # what the Restate server puts in the attempt headers
    assert "traceparent" in headers
    with traced_store.telemetry.invocation(headers):
        async with traced_store.object("Counter", "joined", shared=True):
            pass
    (span,) = otel.spans()
    assert span.context.trace_id == remote.get_span_context().trace_id
    assert span.parent is not None and span.parent.span_id == remote.get_span_context().span_id
    assert trace.get_current_span() is trace.INVALID_SPAN  # detached afterwards

    # a current span wins over the headers
    otel.exporter.clear()
    with (
        otel.tracer.start_as_current_span("handler") as local,
        traced_store.telemetry.invocation(headers),
    ):
        async with traced_store.object("Counter", "joined", shared=True):
            pass
    (span,) = otel.spans()
    assert span.parent is not None and span.parent.span_id == local.get_span_context().span_id


async def test_no_span_when_tracing_is_off(
    client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # whatever another test module did, no global SDK is configured for this test
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", None)
    monkeypatch.setattr(tm.metrics_internal, "_METER_PROVIDER", None)
    store = RedisStateStore(client)
    assert not store.telemetry.tracing() and not store.telemetry.metering()
    started: list[str] = []
    real = store.telemetry.tracer.start_span

    def spy(name: str, *args: Any, **kwargs: Any) -> trace.Span:
        started.append(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(store.telemetry.tracer, "start_span", spy)
    async with store.object("Counter", "quiet", state_preload=False) as s:
        s.set("n", await s.get("n") or 1)
    async with store.object("Counter", "quiet", shared=True) as s:
        assert await s.get("n") == 1  # the state is there: the round trips ran
    assert started == []

    # an SDK configured globally after the store was created is picked up
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)
    assert store.telemetry.tracing()
    async with store.object("Counter", "quiet", shared=True) as s:
        pass
    assert started == ["EVALSHA restate_redis.open"]
    provider.shutdown()


async def test_unsampled_spans_record_nothing(client: aioredis.Redis) -> None:
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_OFF)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    store = RedisStateStore(client, tracer_provider=provider)
    async with store.object("Counter", "s") as s:
        s.set("n", 1)
    async with store.object("Counter", "s", shared=True) as s:
        assert await s.get("n") == 1
    assert exporter.get_finished_spans() == ()
    provider.shutdown()


async def test_cluster_and_sentinel_clients(otel: Otel) -> None:
    """server.* are the first seed node of a cluster; a sentinel client has no fixed server."""
    from tests.support.servers import start_cluster, start_sentinel_group

    cluster = start_cluster(3)
    try:
        store = RedisStateStore.from_url(
            cluster.url, tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider
        )
        async with store.object("Counter", "c1") as s:
            s.set("n", 1)
        await store.aclose()
    finally:
        cluster.stop()
    first = cluster.masters[0].port
    open_, commit = otel.spans()
    for span in (open_, commit):
        a = attrs(span)
        assert (a["server.address"], a["server.port"], a["db.namespace"]) == (
            "127.0.0.1",
            first,
            "0",
        )
        assert a[tm.OUTCOME] == "ok"
    assert attrs(commit)[tm.VERSION] == 1

    otel.exporter.clear()
    group = start_sentinel_group(0)
    try:
        store = RedisStateStore.from_url(
            group.url, tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider
        )
        async with store.object("Counter", "s1", state_preload=False) as s:
            assert await s.get("n") is None  # read with the open
            assert await s.get("m") is None  # a read of its own
        await store.aclose()
    finally:
        group.stop()
    spans = otel.spans()
    assert [sp.name for sp in spans] == [
        "EVALSHA restate_redis.open",
        "HGET",  # no server.address:server.port to name as the target
        "EVALSHA restate_redis.release",
    ]
    for span in spans:
        assert "server.address" not in attrs(span)
        assert attrs(span)[tm.OUTCOME] == "ok"


def test_state_spans_join_a_real_restate_invocation_trace() -> None:
    """A Restate server with tracing on sends a traceparent; invocation() nests the spans."""
    import shutil
    import threading

    import httpx

    from tests.support.otlp import OtlpReceiver
    from tests.support.restate_server import start_stack
    from tests.support.servers import start_server

    srv = start_server("redis")
    receiver = OtlpReceiver()
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    env = {
        "RESTATE_REDIS_URL": srv.url,
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_SERVICE_NAME": "traced-test",
    }
    # nothing listens there: Restate only needs tracing on to send the trace context
    server_env = {"RESTATE_TRACING_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    try:
        stack = start_stack("tests.support.traced_app:app", env, server_env=server_env)
        try:
            parents = []
            for handler in ("bump", "bump_switched"):
                reply = httpx.post(f"{stack.ingress}/Traced/k1/{handler}", timeout=60)
                assert reply.status_code == 200, reply.text
                parents.append(reply.json())
        finally:
            stack.stop()
    finally:
        receiver.shutdown()
        receiver.server_close()
        thread.join(10)
        srv.stop()
        shutil.rmtree(srv.dir, ignore_errors=True)
    links = receiver.trace_links()
    assert [name for name, _, _ in links] == [
        "EVALSHA restate_redis.open",
        "EVALSHA restate_redis.commit",
    ] * 2
    for traceparent, pair in zip(parents, (links[:2], links[2:]), strict=True):
        version, trace_id, parent_id, _flags = traceparent.split("-")
        assert version == "00"
        assert all((t, p) == (trace_id, parent_id) for _, t, p in pair)
