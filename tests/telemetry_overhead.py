"""What the telemetry hook costs: ``python -m tests.telemetry_overhead [SESSIONS] [ROUNDS]``.

Not a test (no timed assertions in tests): it prints medians and minimums of alternating runs.

- per round trip: ``store.telemetry.traced`` around a call that returns at once, against a bare
  ``await``; without an SDK and with one (spans through a batch processor, metrics);
- per session: exclusive lazy sessions (open, one ``get``, one ``set``, commit) against a local
  Redis started for the run, client CPU time; "no hook" replaces ``traced`` by the bare call.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from restate_redis import RedisStateStore
from restate_redis.tools.stack import start_server


class Drop(SpanExporter):
    """Exports nowhere: the cost measured is the SDK's and the hook's, not a network's."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def sdk_providers() -> tuple[TracerProvider, MeterProvider]:
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(Drop()))
    return tracer_provider, MeterProvider(metric_readers=[InMemoryMetricReader()])


def report(title: str, unit: str, results: dict[str, list[float]]) -> None:
    print(title)
    for name, values in results.items():
        median = statistics.median(values)
        print(f"  {name:28s} median {median:9.2f} {unit}  min {min(values):9.2f}")


async def alternate(runs: dict[str, Callable[[], Awaitable[float]]], rounds: int) -> Any:
    results: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            results[name].append(await run())
    return results


async def per_round_trip(rounds: int, n: int = 20_000) -> None:
    async def reply() -> bytes:
        return b"\x01"

    client = aioredis.Redis()  # never connected: the calls do not reach it
    off = RedisStateStore(client)
    tracer_provider, meter_provider = sdk_providers()
    on = RedisStateStore(client, tracer_provider=tracer_provider, meter_provider=meter_provider)
    s_off = off.object("Counter", "k", state_preload=False)
    s_on = on.object("Counter", "k", state_preload=False)

    def timed(store: RedisStateStore | None, session: Any, count: int) -> Any:
        async def run() -> float:
            started = time.perf_counter()
            for _ in range(count):
                if store is None:
                    await reply()
                else:
                    await store.telemetry.traced("get", session.record, reply)
            return (time.perf_counter() - started) / count * 1e6

        return run

    results = await alternate(
        {
            "no hook": timed(None, None, n),
            "hook, no SDK": timed(off, s_off, n),
            "hook, SDK spans+metrics": timed(on, s_on, n // 10),
        },
        rounds,
    )
    report("per round trip (the hook alone)", "us", results)
    tracer_provider.shutdown()
    meter_provider.shutdown()
    await client.aclose()


async def per_session(sessions: int, rounds: int) -> None:
    server = start_server("redis")
    try:
        client = aioredis.Redis.from_url(server.url)
        bare = RedisStateStore(client)
        bare.telemetry.traced = lambda op, session, call: call()  # type: ignore[method-assign]
        off = RedisStateStore(client)
        tracer_provider, meter_provider = sdk_providers()
        on = RedisStateStore(client, tracer_provider=tracer_provider, meter_provider=meter_provider)

        def timed(store: RedisStateStore) -> Callable[[], Awaitable[float]]:
            async def run() -> float:
                started = time.process_time()
                for i in range(sessions):
                    async with store.object("Counter", f"k{i % 100}", state_preload=False) as s:
                        s.set("n", (await s.get("n") or 0) + 1)
                return (time.process_time() - started) / sessions * 1e6

            return run

        await timed(bare)()  # warm up: connections, script load
        results = await alternate(
            {
                "no hook": timed(bare),
                "API only, no SDK": timed(off),
                "SDK spans+metrics": timed(on),
            },
            rounds,
        )
        report(f"per session, client CPU ({sessions} sessions a run)", "us", results)
        tracer_provider.shutdown()
        meter_provider.shutdown()
        await client.aclose()
    finally:
        server.stop()


def main(argv: list[str]) -> None:
    sessions = int(argv[0]) if argv else 1500
    rounds = int(argv[1]) if len(argv) > 1 else 9
    asyncio.run(per_round_trip(rounds))
    asyncio.run(per_session(sessions, rounds))


if __name__ == "__main__":
    main(sys.argv[1:])
