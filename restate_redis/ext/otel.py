"""OpenTelemetry spans and metrics for every Redis round trip of a session.

Only the OpenTelemetry API is needed at run time. With no SDK configured (no global provider
set and none passed to the store) :meth:`Telemetry.traced` hands back the call's own
awaitable: no span, no clock, no attribute is computed. With an SDK, each round trip is one
span of kind CLIENT, named and attributed by the semantic conventions for database clients
(Redis):

- name ``"{db.operation.name} {target}"``: ``EVALSHA restate_redis.open`` for a script (the
  target is ``db.stored_procedure.name``), ``HGET 127.0.0.1:6379`` for a plain command (the
  target is ``server.address:server.port``, since the Redis key itself is not low-cardinality),
  ``PIPELINE restate_redis.commit`` for a commit sent with its WAIT (``min_replicas``);
- ``db.system.name`` "redis", ``db.operation.name``, ``db.stored_procedure.name``,
  ``db.namespace`` (the database index given when the client was configured), ``server.address``,
  ``server.port``; on failure ``error.type`` (the exception's qualified class name) and, for a
  Redis error reply, ``db.response.status_code`` (its prefix, e.g. ``WRONGTYPE``);
- this library's ``restate_redis.*`` attributes (see :data:`ATTRIBUTES`). Values never go into
  spans; only sizes and counts do.

The backend's retry policy wraps :meth:`Telemetry.traced` from outside (in
``backend/engine.py``), so each attempt is its own span, and each retry is counted by
:meth:`Telemetry.record_retry`. :meth:`Telemetry.invocation` puts the spans of a Restate
handler under the trace context that the Restate server sent with the invocation.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import importlib
import logging
import threading
import time
import traceback
import weakref
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import timedelta
from importlib import metadata
from typing import TYPE_CHECKING, Any, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.metrics import CallbackOptions, NoOpMeterProvider, Observation
from opentelemetry.trace import SpanKind, Status, StatusCode

from ..backend import replies
from ..backend.connection import RedisClient
from ..backend.inventory import Usage, measure
from ..durations import seconds
from ..errors import InvalidOptionError
from ..observe import ROUNDTRIP, ObjectKeyMode, register

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import Span, TracerProvider

    from ..observe import SessionRecord
    from ..store import RedisStateStore

try:  # where set_meter_provider keeps the global provider (see _global_configured)
    metrics_internal: Any = importlib.import_module("opentelemetry.metrics._internal")
except ImportError:  # pragma: no cover - a future API without it: always take the full path
    metrics_internal = None

T = TypeVar("T")

SCOPE = "restate_redis"
log = logging.getLogger("restate_redis")

# Attribute names of this library (the db.* / server.* ones are the semantic conventions').
OPERATION = "restate_redis.operation"  # open, get, keys, commit, release, renew, wait
SERVICE = "restate_redis.service"
OBJECT_KEY = "restate_redis.object_key"  # plain or "sha256:<16 hex>"; absent with "omit"
WORKFLOW_ID = "restate_redis.workflow_id"  # same, for a workflow session
MODE = "restate_redis.mode"  # eager, lazy, preload (what the session really loaded)
SHARED = "restate_redis.shared"
STATE_KEY = "restate_redis.state_key"  # the state key of a lazy get
KEYS = "restate_redis.keys"  # state keys read (open, get, keys) or written (commit)
BYTES_READ = "restate_redis.bytes_read"  # encoded value bytes received
BYTES_WRITTEN = "restate_redis.bytes_written"  # encoded value bytes sent
COMMIT_ID = "restate_redis.commit_id"
LEASE_WAIT = "restate_redis.lease_wait"  # seconds waited for the lease before this attempt
VERSION = "restate_redis.version"  # the object's version after open / commit
OUTCOME = "restate_redis.outcome"  # ok, lease_busy, already_applied, lease_lost, ..., error
WOKEN = "restate_redis.woken"  # a lease wait ended by a release signal, not by its timeout

ATTRIBUTES = (
    OPERATION,
    SERVICE,
    OBJECT_KEY,
    WORKFLOW_ID,
    MODE,
    SHARED,
    STATE_KEY,
    KEYS,
    BYTES_READ,
    BYTES_WRITTEN,
    COMMIT_ID,
    LEASE_WAIT,
    VERSION,
    OUTCOME,
    WOKEN,
)

# op -> (Redis command, Lua script name or None)
COMMANDS: dict[str, tuple[str, str | None]] = {
    "open": ("EVALSHA", "restate_redis.open"),
    "get": ("HGET", None),
    "keys": ("EVALSHA", "restate_redis.scan"),
    "all": ("EVALSHA", "restate_redis.scan"),
    "commit": ("EVALSHA", "restate_redis.commit"),
    "release": ("EVALSHA", "restate_redis.release"),
    "renew": ("EVALSHA", "restate_redis.renew"),
    "wait": ("BLPOP", None),
}

# The outcome a script's refusal is reported as.
_OUTCOMES = {
    replies.Status.BUSY: "lease_busy",
    replies.Status.WRONG_TYPE: "wrong_type",
    replies.Status.COMPLETED: "workflow_completed",
    replies.Status.LEASE_LOST: "lease_lost",
    replies.Status.CORRUPT: "corrupt",
}

# Outcomes that mean the operation did not do what the session asked: span status ERROR.
_FAILED = frozenset({"wrong_type", "workflow_completed", "lease_lost", "corrupt", "error"})


def _version() -> str:
    try:
        return metadata.version("restate-redis")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0+unknown"


def _global_configured(module: Any, name: str) -> bool:
    # The API keeps the provider set by set_tracer_provider / set_meter_provider in a module
    # global. Reading it is the cheapest way to learn that no SDK is configured (the public
    # getters look up os.environ on every call, about 3 us here). Should a future API rename
    # it, assume an SDK: slower, never wrong.
    return getattr(module, name, True) is not None


def _server(client: RedisClient) -> tuple[str | None, int | None, str | None]:
    """(server.address, server.port, db.namespace) as the client was configured."""
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", None)
    if kwargs is None:
        kwargs = getattr(client, "connection_kwargs", None) or {}
    host, port, db = kwargs.get("host"), kwargs.get("port"), kwargs.get("db")
    if host is None and kwargs.get("path"):
        host, port = kwargs["path"], None
    if host is None:  # a cluster client: the first node it was configured with
        nodes = getattr(getattr(client, "nodes_manager", None), "startup_nodes", None) or {}
        for node in nodes.values():
            host, port, db = node.host, node.port, 0
            break
    return (
        None if host is None else str(host),
        None if port is None else int(port),
        None if db is None else str(db),
    )


def _sizes(values: Any) -> tuple[int, int]:
    """(values present, their total bytes) of a sequence of values or None/False."""
    present = [v for v in values if v is not None and v is not False]
    return len(present), sum(len(v) for v in present)


_NOTHING: AbstractContextManager[None] = nullcontext()


@contextmanager
def _attached(headers: Mapping[str, str]) -> Iterator[None]:
    token = otel_context.attach(propagate.extract(headers))
    try:
        yield
    finally:
        otel_context.detach(token)


# (attribute, name, unit, description) of each counter a Telemetry keeps.
_COUNTERS = (
    ("_commits", "restate_redis.commits", "{commit}", "Commit round trips, by outcome"),
    (
        "_conflicts",
        "restate_redis.lease.conflicts",
        "{conflict}",
        "Opens that found the lease held by another session and had to wait",
    ),
    (
        "_timeouts",
        "restate_redis.lease.timeouts",
        "{timeout}",
        "Exclusive sessions that gave up waiting for the lease",
    ),
    (
        "_lost",
        "restate_redis.lease.lost",
        "{lease}",
        "Leases found lost at renewal or commit (the commit was not applied)",
    ),
    ("_retries", "restate_redis.retries", "{retry}", "Round trips retried after a transient error"),
    ("_read", "restate_redis.bytes.read", "By", "Encoded state value bytes read from Redis"),
    ("_written", "restate_redis.bytes.written", "By", "Encoded state value bytes written to Redis"),
)


class Telemetry:
    """The spans and metrics of one store; built by :class:`~restate_redis.RedisStateStore`.

    ``tracer_provider`` / ``meter_provider``: the providers to use; None (the default) uses the
    global ones, resolved on each round trip, so an SDK configured after the store was created
    is picked up. ``object_key``: how the object key or workflow id appears in spans:
    ``"plain"``, ``"hash"`` (``sha256:`` and the first 16 hex digits of its SHA-256, enough to
    correlate spans, not to anonymise a guessable key) or ``"omit"``.
    """

    # The counters, made from _COUNTERS.
    _commits: metrics.Counter
    _conflicts: metrics.Counter
    _timeouts: metrics.Counter
    _lost: metrics.Counter
    _retries: metrics.Counter
    _read: metrics.Counter
    _written: metrics.Counter

    def __init__(
        self,
        client: RedisClient,
        *,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        object_key: ObjectKeyMode = "plain",
    ) -> None:
        if object_key not in ("plain", "hash", "omit"):
            raise InvalidOptionError(
                f"trace_object_key must be 'plain', 'hash' or 'omit', got {object_key!r}"
            )
        self.object_key_mode: ObjectKeyMode = object_key
        version = _version()
        # None: follow the global provider (a proxy until an SDK sets one).
        self._own_tracer = tracer_provider is not None
        self._own_meter = meter_provider is not None
        self._tracing_off = isinstance(tracer_provider, trace.NoOpTracerProvider)
        self._metrics_off = isinstance(meter_provider, NoOpMeterProvider)
        self.tracer = (
            tracer_provider.get_tracer(SCOPE, version)
            if tracer_provider is not None
            else trace.get_tracer(SCOPE, version)
        )
        meter = (
            meter_provider.get_meter(SCOPE, version)
            if meter_provider is not None
            else metrics.get_meter(SCOPE, version)
        )
        histogram, counter = meter.create_histogram, meter.create_counter
        self._load = histogram(
            "restate_redis.load.duration", "s", "Duration of a session's open (snapshot load)"
        )
        self._get = histogram(
            "restate_redis.get.duration", "s", "Duration of a lazy state read (HGET)"
        )
        self._commit = histogram("restate_redis.commit.duration", "s", "Duration of a commit")
        self._lease_wait = histogram(
            "restate_redis.lease.wait", "s", "Time an exclusive session waited for its lease"
        )
        for attr, name, unit, description in _COUNTERS:
            setattr(self, attr, counter(name, unit, description))

        host, port, db = _server(client)
        target = f"{host}:{port}" if host is not None and port is not None else host
        base: dict[str, Any] = {"db.system.name": "redis"}
        if db is not None:
            base["db.namespace"] = db
        if host is not None:
            base["server.address"] = host
        if port is not None:
            base["server.port"] = port
        self._target = target
        self._base = base
        # Span names and creation-time attributes, computed once per (command, script).
        self._starts: dict[tuple[str, str | None], tuple[str, dict[str, Any]]] = {}
        for command, script in COMMANDS.values():
            self._start_of(command, script)

    def _start_of(self, command: str, script: str | None) -> tuple[str, dict[str, Any]]:
        found = self._starts.get((command, script))
        if found is None:
            attrs = {**self._base, "db.operation.name": command}
            if script is not None:
                attrs["db.stored_procedure.name"] = script
            if command == "PIPELINE":
                attrs["db.operation.batch.size"] = 2
            target = script if script is not None else self._target
            name = command if target is None else f"{command} {target}"
            found = self._starts[(command, script)] = (name, attrs)
        return found

    # -- switches ---------------------------------------------------------------------------

    def tracing(self) -> bool:
        """True when a tracer provider that can record spans is configured."""
        if self._own_tracer:
            return not self._tracing_off
        return _global_configured(trace, "_TRACER_PROVIDER")

    def metering(self) -> bool:
        """True when a meter provider that can record metrics is configured."""
        if self._own_meter:
            return not self._metrics_off
        return _global_configured(metrics_internal, "_METER_PROVIDER")

    # -- the hook ---------------------------------------------------------------------------

    def traced(
        self, op: str, session: SessionRecord, call: Callable[[], Awaitable[T]]
    ) -> Awaitable[T]:
        """Round trip ``call`` of ``session``, in its span and measured, as an awaitable.

        With neither tracing nor metrics configured this is ``call()`` itself: not even a
        coroutine frame is added.
        """
        tracing = self.tracing()
        if tracing or self.metering():
            return self._traced(op, session, call, tracing)
        return call()

    async def _traced(
        self, op: str, session: SessionRecord, call: Callable[[], Awaitable[T]], tracing: bool
    ) -> T:
        metering = self.metering()
        command, script = COMMANDS[op]
        if op == "commit" and session.replicated:
            command = "PIPELINE"  # EVALSHA and WAIT in one round trip (replication.py)
        detail = ROUNDTRIP.get()
        state_key: str | None = None
        if detail is not None:
            command, state_key = detail
        span: Span = trace.INVALID_SPAN
        if tracing:
            name, attrs = self._start_of(command, script)
            span = self.tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attrs)
        recording = span.is_recording()
        written = session.writes if op == "commit" else (0, 0)
        token = None
        if recording:
            span.set_attributes(self._describe(op, session, state_key, written))
            token = otel_context.attach(trace.set_span_in_context(span))
        started = time.perf_counter()
        try:
            result = await call()
        except BaseException as exc:
            elapsed = time.perf_counter() - started
            if recording:
                self._failed(span, exc, session)
            if metering:
                self._measure(op, session, "error", elapsed, 0, written[1])
            raise
        else:
            elapsed = time.perf_counter() - started
            found: dict[str, Any] = {}
            outcome, keys, read = self._result(op, result, found)
            if recording:
                found[OUTCOME] = outcome
                if op != "commit":
                    found[KEYS] = keys
                if read:
                    found[BYTES_READ] = read
                if outcome in _FAILED:
                    found["error.type"] = outcome
                    span.set_status(Status(StatusCode.ERROR, outcome))
                span.set_attributes(found)
            if metering:
                self._measure(op, session, outcome, elapsed, read, written[1])
            return result
        finally:
            if token is not None:
                otel_context.detach(token)
            span.end()

    def invocation(
        self, headers: Mapping[str, str] | Callable[[], Mapping[str, str]]
    ) -> AbstractContextManager[None]:
        """Within this block, spans nest under the trace context that ``headers`` carry.

        For a Restate handler, pass the attempt headers of its request
        (``ctx.request().attempt_headers``): the Restate server sends the invocation's W3C
        ``traceparent`` there, so the state spans join the invocation's trace. Nothing changes
        when a span is already current or when tracing is off. ``headers`` can be a function
        returning them, called only when they are needed.
        """
        if not self.tracing() or trace.get_current_span().get_span_context().is_valid:
            return _NOTHING
        return _attached(headers() if callable(headers) else headers)

    def record_retry(self, op: str, session: SessionRecord) -> None:
        """Count a retry of round trip ``op`` (called by the retry policy between attempts)."""
        if self.metering():
            self._retries.add(1, {SERVICE: session.service, OPERATION: op})

    def record_lease_timeout(self, session: SessionRecord) -> None:
        """Count an exclusive session that gave up waiting for its lease."""
        if self.metering():
            self._timeouts.add(1, {SERVICE: session.service, MODE: session.mode})

    # -- details ----------------------------------------------------------------------------

    def key_attribute(self, key: str) -> str | None:
        """The object key as it appears in spans, per ``trace_object_key``."""
        if self.object_key_mode == "plain":
            return key
        if self.object_key_mode == "hash":
            return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]
        return None

    def _describe(
        self, op: str, session: SessionRecord, state_key: str | None, written: tuple[int, int]
    ) -> dict[str, Any]:
        attrs: dict[str, Any] = {
            OPERATION: op,
            SERVICE: session.service,
            MODE: session.mode,
            SHARED: session.shared,
        }
        key = self.key_attribute(session.key)
        if key is not None:
            attrs[OBJECT_KEY if session.kind == "object" else WORKFLOW_ID] = key
        if state_key is not None:
            attrs[STATE_KEY] = state_key
        if session.commit_id is not None and op in ("open", "commit"):
            attrs[COMMIT_ID] = session.commit_id
        if op == "open" and not session.shared:
            attrs[LEASE_WAIT] = session.lease_wait
        if op == "commit":
            attrs[KEYS], attrs[BYTES_WRITTEN] = written
        return attrs

    def _result(self, op: str, result: Any, found: dict[str, Any]) -> tuple[str, int, int]:
        """(outcome, state keys read, value bytes read) of a round trip's reply; other
        attributes it shows go into ``found``."""
        if op == "open" or op == "commit":
            refused = replies.refusal(result)
            if refused is not None:
                return _OUTCOMES.get(refused.status, "error"), 0, 0
        if op == "open":
            opened = replies.Opened.parse(result)
            found[VERSION] = opened.version
            found[MODE] = opened.mode
            if opened.mode == "eager":
                return "ok", len(opened.data) // 2, sum(len(v) for v in opened.data[1::2])
            if opened.mode == "preload" or (
                opened.mode == "lazy" and opened.replay is replies.Replay.NONE
            ):
                return "ok", *_sizes(opened.data)
            return "ok", 0, 0
        if op == "get":
            return "ok", *_sizes([result])
        if op == "keys":  # a page of scan.lua: names
            return "ok", len(result[1]), 0
        if op == "all":  # a page of scan.lua: name, value pairs
            return "ok", *_sizes(result[1][1::2])
        if op == "commit":
            committed = replies.Committed.parse(result)
            found[VERSION] = committed.version
            # this commit id was applied before (a retried invocation): nothing written now
            already = committed.status is replies.Status.ALREADY_APPLIED
            return ("already_applied" if already else "ok"), 0, 0
        if op == "renew":
            return ("ok" if result else "lease_lost"), 0, 0
        if op == "wait":
            found[WOKEN] = result is not None
        return "ok", 0, 0

    def _failed(self, span: Span, exc: BaseException, session: SessionRecord) -> None:
        kind = type(exc)
        span.set_attribute(OUTCOME, "error")
        span.set_attribute("error.type", f"{kind.__module__}.{kind.__qualname__}")
        message = self._scrub(str(exc), session)
        first = message.split(" ", 1)[0]
        if kind.__name__.endswith("ResponseError") and first.isupper():
            span.set_attribute("db.response.status_code", first)
        if message == str(exc):
            span.record_exception(exc)
        else:  # the key must not leak through the exception text either
            stack = self._scrub("".join(traceback.format_exception(exc)), session)
            span.record_exception(
                exc, attributes={"exception.message": message, "exception.stacktrace": stack}
            )
        span.set_status(Status(StatusCode.ERROR, f"{kind.__name__}: {message}"))

    def _scrub(self, text: str, session: SessionRecord) -> str:
        key = session.key
        if self.object_key_mode == "plain" or not key:
            return text
        from ..keyspace import encode_name

        replacement = self.key_attribute(key) or "<key>"
        return text.replace(key, replacement).replace(encode_name(key), replacement)

    def _measure(
        self, op: str, session: SessionRecord, outcome: str, elapsed: float, read: int, written: int
    ) -> None:
        attrs = {SERVICE: session.service, MODE: session.mode, OUTCOME: outcome}
        if op == "open":
            self._load.record(elapsed, attrs)
            if outcome == "lease_busy":
                self._conflicts.add(1, attrs)
            elif outcome == "ok" and not session.shared:
                self._lease_wait.record(session.lease_wait, attrs)
        elif op == "get":
            self._get.record(elapsed, attrs)
        elif op == "commit":
            self._commit.record(elapsed, attrs)
            self._commits.add(1, attrs)
            if written and outcome == "ok":
                self._written.add(written, attrs)
        if outcome == "lease_lost":
            self._lost.add(1, attrs)
        if read:
            self._read.add(read, attrs)


register(Telemetry)  # every store created from now on is observed (see observe.py)


# -- what the state stores: gauges fed by a periodic sweep --------------------------------------

NAMESPACE = "restate_redis.namespace"
LOAD = "restate_redis.load"  # eager, near, lazy, unknown (see backend.inventory.EagerFit)

DEFAULT_SIZE_INTERVAL = 300.0
DEFAULT_SIZE_MAX_OBJECTS = 1_000_000

Observations = tuple[tuple[str, tuple["Observation", ...]], ...]


class _SizeGauges:
    """The three observable gauges of one meter, created once; each callback reports what
    every live :class:`SizeMetrics` of that meter found in its last complete sweep."""

    def __init__(self, meter: Any) -> None:
        self._sources: list[SizeMetrics] = []
        self._lock = threading.Lock()  # the reader calls back on its own thread
        for name, unit, description in (
            ("restate_redis.state.size", "By", "Stored bytes of the state, per service"),
            ("restate_redis.state.keys", "{key}", "State keys, per service"),
            (
                "restate_redis.state.objects",
                "{object}",
                "Objects with state, per service and by how an eager session loads them",
            ),
        ):
            meter.create_observable_gauge(
                name,
                callbacks=[functools.partial(self._observe, name)],
                unit=unit,
                description=description,
            )

    def add(self, source: SizeMetrics) -> None:
        with self._lock:
            self._sources.append(source)

    def remove(self, source: SizeMetrics) -> None:
        with self._lock:
            self._sources = [s for s in self._sources if s is not source]

    def _observe(self, name: str, options: CallbackOptions) -> list[Observation]:
        with self._lock:
            sources = list(self._sources)
        found: list[Observation] = []
        for source in sources:
            for gauge, observations in source.observations:
                if gauge == name:
                    found.extend(observations)
        return found


_size_gauges: weakref.WeakKeyDictionary[Any, _SizeGauges] = weakref.WeakKeyDictionary()
_size_gauges_lock = threading.Lock()


class SizeMetrics:
    """OpenTelemetry gauges of what each service stores, fed by a periodic sweep of the
    bookkeeping (the same one as ``restate-redis du``: SCAN on every master, pipelined reads of
    ``meta`` and ``HLEN``; no value is read). Off until one is started::

        async with SizeMetrics(store, interval=300):
            ...  # the worker runs; the gauges report the last complete sweep

    Gauges (meter ``restate_redis``; attributes ``restate_redis.namespace`` and
    ``restate_redis.service``):

    - ``restate_redis.state.size`` (By): stored bytes of the objects of known size;
    - ``restate_redis.state.keys`` ({key}): state keys;
    - ``restate_redis.state.objects`` ({object}): objects, with ``restate_redis.load``: how an
      eager session opens them under the store's eager limits (``eager``, ``near``: at 90 % of
      a limit or more, ``lazy``: over one, ``unknown``: size not yet counted).

    ``interval``: seconds (or a timedelta) from the end of one sweep to the start of the next
    (default 300); the first starts at once. ``max_objects``: a sweep that finds more objects
    stops there and publishes nothing (a warning names this option), so a namespace larger
    than expected costs one bounded sweep per interval, never wrong totals (default
    1,000,000). ``meter_provider``: default the global one. A sweep that fails (Redis
    unreachable) is logged; the gauges keep the last complete sweep. Run one per namespace,
    in one process: every process that runs it sweeps the whole namespace.
    """

    def __init__(
        self,
        store: RedisStateStore,
        *,
        interval: float | timedelta = DEFAULT_SIZE_INTERVAL,
        max_objects: int = DEFAULT_SIZE_MAX_OBJECTS,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        if not isinstance(max_objects, int) or isinstance(max_objects, bool) or max_objects < 1:
            raise InvalidOptionError(f"max_objects must be a positive int, got {max_objects!r}")
        self.store = store
        self.interval = seconds(interval, "interval")
        self.max_objects = max_objects
        self.observations: Observations = ()
        """What the gauges report now: (gauge name, observations) of the last sweep."""
        self.last: Usage | None = None
        """The last complete sweep, or None before the first."""
        meter = (
            meter_provider.get_meter(SCOPE, _version())
            if meter_provider is not None
            else metrics.get_meter(SCOPE, _version())
        )
        with _size_gauges_lock:
            gauges = _size_gauges.get(meter)
            if gauges is None:
                gauges = _size_gauges[meter] = _SizeGauges(meter)
        self._gauges = gauges
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def refresh(self) -> Usage:
        """Sweep now and publish what it found (when complete); returns it."""
        store = self.store
        found = await measure(
            store.client,
            store.keyspace,
            byte_limit=store.eager_state_size_limit,
            field_limit=store.eager_state_field_limit,
            max_objects=self.max_objects,
        )
        if not found.complete:
            log.warning(
                "restate_redis size metrics: namespace %r holds more than max_objects=%d "
                "objects; nothing published (raise max_objects)",
                store.keyspace.namespace,
                self.max_objects,
            )
            return found
        self.last = found
        self.observations = self._observations(found)
        return found

    def _observations(self, found: Usage) -> Observations:
        namespace = self.store.keyspace.namespace
        size: list[Observation] = []
        keys: list[Observation] = []
        objects: list[Observation] = []
        for info in found.services:
            attrs = {NAMESPACE: namespace, SERVICE: info.name}
            size.append(Observation(info.bytes, attrs))
            keys.append(Observation(info.keys, attrs))
            by_load = {
                "eager": info.eager,
                "near": info.near,
                "lazy": info.lazy,
                "unknown": info.objects - info.eager - info.near - info.lazy,
            }
            for load, count in by_load.items():
                objects.append(Observation(count, {**attrs, LOAD: load}))
        return (
            ("restate_redis.state.size", tuple(size)),
            ("restate_redis.state.keys", tuple(keys)),
            ("restate_redis.state.objects", tuple(objects)),
        )

    async def _run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.refresh()
            except Exception as exc:  # the next sweep tries again
                if stop.is_set():
                    return  # the cancel of aclose, turned into an error by the client
                log.warning("restate_redis size metrics: a sweep failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)

    def start(self) -> None:
        """Start sweeping (the first sweep at once) and reporting; a no-op when running."""
        if self._task is None:
            self._gauges.add(self)
            self._stop = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(self._stop))

    async def aclose(self) -> None:
        """Stop sweeping; the gauges report nothing more for this store."""
        task, self._task = self._task, None
        self._gauges.remove(self)
        self.observations = ()
        if task is not None:
            self._stop.set()  # even should the client swallow the cancel below
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> SizeMetrics:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
