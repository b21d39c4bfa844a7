"""SizeMetrics: gauges of stored bytes, state keys and objects per service, read back from the
OpenTelemetry SDK's in-memory metric reader, against a real server."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from restate_redis import InvalidOptionError, RedisStateStore
from restate_redis.ext.otel import SizeMetrics
from restate_redis.keyspace import META_FIELD
from tests.support.bookkeeping import packed_meta
from tests.support.keys import state_fields
from tests.support.servers import free_port

SIZE, KEYS, OBJECTS = (
    "restate_redis.state.size",
    "restate_redis.state.keys",
    "restate_redis.state.objects",
)


class Reader:
    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader])

    def points(self) -> dict[str, dict[tuple[tuple[str, Any], ...], int]]:
        """gauge name -> sorted attributes -> value, as a collection sees them now."""
        found: dict[str, dict[tuple[tuple[str, Any], ...], int]] = {}
        data = self.reader.get_metrics_data()
        for rm in data.resource_metrics if data else []:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name.startswith("restate_redis.state."):
                        for point in metric.data.data_points:
                            attrs = tuple(sorted((point.attributes or {}).items()))
                            found.setdefault(metric.name, {})[attrs] = point.value
        return found


@pytest.fixture
def otel() -> Iterator[Reader]:
    r = Reader()
    yield r
    r.provider.shutdown()


def attrs(service: str, namespace: str = "restate", **more: str) -> tuple[tuple[str, Any], ...]:
    found = {"restate_redis.namespace": namespace, "restate_redis.service": service}
    found.update({f"restate_redis.{k}": v for k, v in more.items()})
    return tuple(sorted(found.items()))


async def put(store: RedisStateStore, service: str, key: str, **values: object) -> None:
    async with store.object(service, key) as s:
        for name, value in values.items():
            s.set(name, value)


async def hash_bytes(client: aioredis.Redis, key: str) -> int:
    """The stored bytes of a state hash's state keys, names and values."""
    raw: dict[bytes, bytes] = await client.hgetall(key)  # type: ignore[assignment]
    return sum(len(k) + len(v) for k, v in state_fields(raw).items())


async def test_gauges_report_what_each_service_stores(client: aioredis.Redis, otel: Reader) -> None:
    store = RedisStateStore(client, eager_state_size_limit=1000, eager_state_field_limit=10)
    await put(store, "Cart", "a", items=["x" * 100])
    await put(store, "Cart", "near", items="x" * 950)
    await put(store, "Cart", "big", **{f"k{i}": i for i in range(11)})
    await put(store, "Visits", "home", n=1)
    foreign = store.keyspace.object_keys("Cart", "ext")
    await client.hset(foreign.state, mapping={"a": "1", META_FIELD: packed_meta(1)})  # no size
    sizes = SizeMetrics(store, meter_provider=otel.provider)
    assert otel.points() == {}  # nothing is swept until asked
    await sizes.refresh()
    assert otel.points() == {}  # nor reported before it is started
    sizes.start()
    try:
        cart = [
            await hash_bytes(client, store.keyspace.object_keys("Cart", k).state)
            for k in ("a", "near", "big")
        ]
        home = await hash_bytes(client, store.keyspace.object_keys("Visits", "home").state)
        points = otel.points()
        assert points[SIZE] == {attrs("Cart"): sum(cart), attrs("Visits"): home}
        assert points[KEYS] == {attrs("Cart"): 1 + 1 + 11 + 1, attrs("Visits"): 1}
        assert points[OBJECTS] == {
            attrs("Cart", load="eager"): 1,
            attrs("Cart", load="near"): 1,
            attrs("Cart", load="lazy"): 1,
            attrs("Cart", load="unknown"): 1,
            attrs("Visits", load="eager"): 1,
            attrs("Visits", load="near"): 0,
            attrs("Visits", load="lazy"): 0,
            attrs("Visits", load="unknown"): 0,
        }
    finally:
        await sizes.aclose()
    assert otel.points().get(SIZE, {}) == {}  # a stopped one reports nothing more


async def test_the_first_sweep_runs_at_start_and_two_namespaces_share_the_gauges(
    client: aioredis.Redis, otel: Reader
) -> None:
    one = RedisStateStore(client)
    other = RedisStateStore(client, namespace="other")
    await put(one, "Cart", "a", n=1)
    await put(other, "Cart", "a", n=1, m=2)
    async with (
        SizeMetrics(one, interval=3600, meter_provider=otel.provider) as first,
        SizeMetrics(other, interval=3600, meter_provider=otel.provider) as second,
    ):
        for _ in range(500):  # bounded: the first sweeps run as soon as the loop lets them
            if first.last is not None and second.last is not None:
                break
            await asyncio.sleep(0.01)
        assert otel.points()[KEYS] == {attrs("Cart"): 1, attrs("Cart", "other"): 2}


async def test_a_sweep_over_max_objects_publishes_nothing_and_warns(
    store: RedisStateStore, otel: Reader, caplog: pytest.LogCaptureFixture
) -> None:
    for i in range(5):
        await put(store, "Cart", f"c{i}", n=i)
    async with SizeMetrics(
        store, interval=3600, max_objects=3, meter_provider=otel.provider
    ) as sizes:
        with caplog.at_level(logging.WARNING, logger="restate_redis"):
            found = await sizes.refresh()
        assert not found.complete and sizes.last is None
        assert otel.points().get(SIZE, {}) == {}
        assert "holds more than max_objects=3 objects" in caplog.text
    with pytest.raises(InvalidOptionError, match="max_objects"):
        SizeMetrics(store, max_objects=0)
    with pytest.raises(InvalidOptionError, match="interval"):
        SizeMetrics(store, interval=-1)


async def test_a_failed_sweep_is_logged_and_the_loop_goes_on(
    otel: Reader, caplog: pytest.LogCaptureFixture
) -> None:
    async with RedisStateStore.from_url(
        f"redis://127.0.0.1:{free_port()}/0", retry_attempts=1, socket_connect_timeout=1
    ) as store:
        with caplog.at_level(logging.WARNING, logger="restate_redis"):
            async with SizeMetrics(store, interval=0.01, meter_provider=otel.provider):
                for _ in range(500):  # bounded: until two sweeps have failed
                    if caplog.text.count("a sweep failed") >= 2:
                        break
                    await asyncio.sleep(0.01)
        assert caplog.text.count("a sweep failed") >= 2
        assert otel.points().get(SIZE, {}) == {}


async def test_sessions_send_no_scan_without_size_metrics(
    client: aioredis.Redis, otel: Reader
) -> None:
    """Off by default: a store with a meter provider sweeps nothing by itself."""
    async with RedisStateStore(client, meter_provider=otel.provider) as store:
        await client.config_resetstat()
        await put(store, "Cart", "a", n=1)
        stats: dict[str, Any] = await client.info("commandstats")
        assert "cmdstat_scan" not in stats  # (HLEN is sent by the scripts)
        assert otel.points() == {}
