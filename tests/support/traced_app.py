"""A Restate service for tests/test_telemetry.py: its state spans join the trace Restate sent.

The OpenTelemetry SDK exports each span at once over OTLP/HTTP to ``OTEL_EXPORTER_OTLP_ENDPOINT``.
"""

from __future__ import annotations

import os

import restate
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from restate.context import ObjectContext

from restate_redis import RedisStateStore

provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter()))
store = RedisStateStore.from_url(os.environ["RESTATE_REDIS_URL"], tracer_provider=provider)

traced = restate.VirtualObject("Traced")


@traced.handler()
async def bump(ctx: ObjectContext) -> str:
    """Add one to ``n`` in Redis; returns the traceparent Restate sent with this attempt."""
    headers = ctx.request().attempt_headers
    with store.telemetry.invocation(headers):
        async with store.object("Traced", ctx.key()) as s:
            s.set("n", (await s.get("n") or 0) + 1)
    return headers.get("traceparent", "")


@traced.handler()
@store.restate_state()
async def bump_switched(ctx: ObjectContext) -> str:
    """The same through @store.restate_state(), which joins the trace by itself."""
    ctx.set("n", (await ctx.get("n") or 0) + 1)
    return ctx.request().attempt_headers.get("traceparent", "")


app = restate.app([traced])
