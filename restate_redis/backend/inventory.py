"""What a namespace holds, found without reading one value.

A sweep runs SCAN with a MATCH pattern of the keyspace on the one server or on every master of
a cluster (one after the other: a cluster's SCAN cursor belongs to one node), and reads each
object's bookkeeping in pipelines: the state hash's reserved bookkeeping field (version, stored
bytes, time of the last change, workflow status; keyspace.py), its field count (``HLEN``, less
the reserved fields) and its expiry (``PTTL``). Every call is bounded: a SCAN asks for
:data:`SCAN_COUNT` keys, a pipeline for :data:`BATCH` objects.

Keys restate-redis could not have written (a name that does not decode, a state that is not a
hash or whose bookkeeping does not parse, a state hash without bookkeeping) are skipped and
counted in a :class:`SkippedKeys`, so one stray key never breaks a listing.

The tools' listings and size reports (``restate_redis.tools.admin``) and the size gauge
(``restate_redis.ext.otel``) are built on it.
"""

from __future__ import annotations

import heapq
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from redis.exceptions import ResponseError

from ..keyspace import META_FIELD, PRIOR_FIELD, SEPARATOR, STATE, Keyspace, Meta

__all__ = [
    "BATCH",
    "NEAR_LIMIT",
    "SCAN_COUNT",
    "SKIPPED_EXAMPLES",
    "EagerFit",
    "ObjectInfo",
    "ServiceInfo",
    "SkippedKeys",
    "Sweep",
    "Usage",
    "classify",
    "eager_fit",
    "masters",
    "measure",
    "scan_page",
]

SCAN_COUNT = 1000
"""The COUNT of each SCAN call."""
BATCH = 500
"""Objects whose bookkeeping one pipeline reads."""
SKIPPED_EXAMPLES = 5
"""How many skipped keys a listing names; the rest are only counted."""
NEAR_LIMIT = 0.9
"""An object at this fraction of an eager limit (bytes or state keys) or more is near it."""

EagerFit = Literal["eager", "near", "lazy", "unknown"]
"""How an eager session opens an object: ``eager`` (well within both limits), ``near``
(eager, but at :data:`NEAR_LIMIT` of a limit or more), ``lazy`` (over a limit: it loads
lazily), ``unknown`` (its stored size is unknown and its key count within the limits)."""


# -- what a sweep finds -------------------------------------------------------------------------


@dataclass(slots=True)
class SkippedKeys:
    """Keys of the namespace a listing skipped: restate-redis did not write them (a name
    that does not decode, a ``meta`` that is not a hash or whose version or size is not a
    number, a state hash without ``meta``). Counted, and a few of them named, so that one stray
    key cannot break a listing for everyone."""

    count: int = 0
    examples: list[str] = field(default_factory=list)
    """Up to :data:`SKIPPED_EXAMPLES` of them, each as ``key (why)``."""

    def add(self, redis_key: bytes | str, why: str) -> None:
        self.count += 1
        if len(self.examples) < SKIPPED_EXAMPLES:
            self.examples.append(f"{_key_text(redis_key)} ({why})")

    def merge(self, other: SkippedKeys) -> None:
        self.count += other.count
        room = SKIPPED_EXAMPLES - len(self.examples)
        self.examples.extend(other.examples[: max(0, room)])


def _key_text(redis_key: bytes | str) -> str:
    if isinstance(redis_key, str):
        return redis_key
    return redis_key.decode("utf-8", "backslashreplace")


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One object or workflow in a listing, from its bookkeeping."""

    service: str
    key: str
    workflow_status: str | None = None
    """None for a Virtual Object; "running" or "completed" for a workflow."""
    retention_ms: int | None = None
    """Milliseconds until the object's keys expire; None when they are kept indefinitely."""
    version: int = 0
    """Commits so far (the bookkeeping's ``v``)."""
    size: int | None = None
    """Stored bytes of the state, names and values (the bookkeeping's ``b``); None when
    unknown (state written by another tool, not yet counted by an eager open)."""
    keys: int = 0
    """Number of state keys (``HLEN`` of the state hash, less its reserved fields)."""
    changed_ms: int | None = None
    """When the last commit changed it, ms since the Unix epoch by the server's clock (the
    bookkeeping's ``t``); None when no commit recorded it (written by another tool)."""

    @property
    def kind(self) -> str:
        return "object" if self.workflow_status is None else "workflow"

    def fit(self, byte_limit: int, field_limit: int) -> EagerFit:
        """How an eager session opens it under these limits (see :func:`eager_fit`)."""
        return eager_fit(self.size, self.keys, byte_limit, field_limit)


def eager_fit(size: int | None, keys: int, byte_limit: int, field_limit: int) -> EagerFit:
    """How an eager open treats a state of ``size`` bytes (None: unknown) and ``keys`` state
    keys under the store's ``eager_state_size_limit`` and ``eager_state_field_limit``: it
    loads it whole up to both limits, and falls back to lazy reads over either (open.lua)."""
    if keys > field_limit or (size is not None and size > byte_limit):
        return "lazy"
    if keys >= NEAR_LIMIT * field_limit or (size is not None and size >= NEAR_LIMIT * byte_limit):
        return "near"
    return "unknown" if size is None else "eager"


@dataclass(slots=True)
class ServiceInfo:
    """A service that has stored objects: how many, and how much they store."""

    name: str
    objects: int = 0
    keys: int = 0
    """State keys of all its objects."""
    bytes: int = 0
    """Stored bytes of the objects whose size is known."""
    unsized: int = 0
    """Objects whose stored size is unknown (not in ``bytes``)."""
    lazy: int = 0
    """Objects over an eager limit: an eager session loads them lazily."""
    near: int = 0
    """Objects near an eager limit (:data:`NEAR_LIMIT` of it or more), still loaded eagerly."""
    eager: int = 0
    """Objects of known size well within both eager limits. The rest of ``objects`` (not
    ``eager``, ``near`` or ``lazy``) are of unknown size and within the field limit."""

    def add(self, obj: ObjectInfo, fit: EagerFit) -> None:
        self.objects += 1
        self.keys += obj.keys
        if obj.size is None:
            self.unsized += 1
        else:
            self.bytes += obj.size
        if fit == "lazy":
            self.lazy += 1
        elif fit == "near":
            self.near += 1
        elif fit == "eager":
            self.eager += 1


@dataclass(slots=True)
class Usage:
    """What :func:`measure` found: each service's totals and the largest objects."""

    services: list[ServiceInfo]
    """Sorted by name."""
    largest: list[ObjectInfo]
    """The largest objects of known size, largest first."""
    unsized: list[ObjectInfo]
    """Objects of unknown size, most state keys first."""
    skipped: SkippedKeys
    complete: bool = True
    """False when the sweep stopped at its ``max_objects``: the totals cover only part."""


# -- SCAN on every master -----------------------------------------------------------------------


def is_cluster(client: Any) -> bool:
    from redis.asyncio.cluster import RedisCluster

    return isinstance(client, RedisCluster)


async def masters(client: Any) -> list[Any]:
    """The nodes a SCAN must visit, in a stable order: a cluster's masters sorted by address,
    or ``[None]`` for the one server of any other client."""
    if not is_cluster(client):
        return [None]
    await client.initialize()  # a no-op once the client knows its nodes
    return sorted(client.get_primaries(), key=lambda node: node.name)


async def scan_page(
    client: Any, cursor: int, match: str, count: int = SCAN_COUNT
) -> tuple[int, list[bytes]]:
    """One SCAN call: (the cursor that continues, the keys it returned).

    On a cluster the masters are scanned one after the other and ``cursor`` says which and
    where: ``node cursor * masters + master index``, so 0 starts and ends as on one server
    (where the cursor is the server's own). A cursor holds while the cluster's masters stay
    the same; like SCAN itself, a key may come twice and a key moved meanwhile may be missed.
    """
    nodes = await masters(client)
    index, node_cursor = cursor % len(nodes), cursor // len(nodes)
    node = nodes[index]
    if node is None:
        found, keys = await client.scan(node_cursor, match=match, count=count)
    else:
        cursors, keys = await client.scan(node_cursor, match=match, count=count, target_nodes=node)
        found = cursors[node.name]
    if int(found) != 0:
        return int(found) * len(nodes) + index, list(keys)
    return (index + 1) % len(nodes), list(keys)  # the next master from its start, or done


# -- the bookkeeping of objects -----------------------------------------------------------------


def parse(
    keyspace: Keyspace, redis_key: bytes | str, skipped: SkippedKeys
) -> tuple[str, str] | None:
    """(service, object key) of a ``state`` or ``meta`` key; None for other keys of an object.
    A key whose name restate-redis could not have written is added to ``skipped``: it does not
    decode, or decodes to a name that encodes differently."""
    try:
        text = redis_key.decode("utf-8") if isinstance(redis_key, bytes) else redis_key
        parsed = keyspace.parse(text)
    except (UnicodeError, ValueError):
        parsed = None
    if parsed is not None:
        service, key, kind = parsed
        prefix = f"{keyspace.namespace}{SEPARATOR}"
        try:
            canonical = prefix + keyspace.tag(service, key) + SEPARATOR + kind
        except (UnicodeError, ValueError):
            canonical = None
        if canonical == text and service:
            return (service, key) if kind == STATE else None
    skipped.add(redis_key, "its name does not decode")
    return None


def _text(raw: bytes | str | None) -> str | None:
    if raw is None:
        return None
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw


def _number(raw: bytes | str | None) -> int | None:
    """A non-negative decimal integer field, else None."""
    text = _text(raw)
    return int(text) if text is not None and text.isascii() and text.isdigit() else None


def _raise(*replies: Any) -> None:
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply


def _wrong_type(reply: Any) -> bool:
    return isinstance(reply, ResponseError) and str(reply).startswith("WRONGTYPE")


async def classify(
    client: Any, keyspace: Keyspace, objects: list[tuple[str, str]], skipped: SkippedKeys
) -> list[ObjectInfo]:
    """The listed ones of ``objects``, with their bookkeeping: those with state keys, and
    workflows (their bookkeeping has a status); a cleared object is not listed.

    One pipeline of four single-key commands per object: ``HLEN`` of the state hash (0:
    none), its ``PTTL``, its bookkeeping field and whether it holds prior values (both
    reserved fields, counted out of HLEN); a key of another type fails its command with
    WRONGTYPE, and only such keys are asked their ``TYPE``, to name it. Objects whose
    bookkeeping restate-redis did not write go to ``skipped``.
    """
    if not objects:
        return []
    pipe = client.pipeline(transaction=False)
    for service, key in objects:
        state = keyspace.object_keys(service, key).state
        pipe.hlen(state)
        pipe.pttl(state)
        pipe.hget(state, META_FIELD)
        pipe.hexists(state, PRIOR_FIELD)
    replies = await pipe.execute(raise_on_error=False)
    wrong: dict[str, str] = {}  # key -> its type, for the keys of another type
    for i, (service, key) in enumerate(objects):
        if _wrong_type(replies[4 * i]):
            wrong[keyspace.object_keys(service, key).state] = "?"
    if wrong:
        pipe = client.pipeline(transaction=False)
        for redis_key in wrong:
            pipe.type(redis_key)
        for redis_key, kind in zip(wrong, await pipe.execute(), strict=True):
            wrong[redis_key] = _text(kind) or "?"
    listed: list[ObjectInfo] = []
    for i, (service, key) in enumerate(objects):
        count, pttl, raw, prior = replies[4 * i : 4 * i + 4]
        state = keyspace.object_keys(service, key).state
        if state in wrong:
            skipped.add(state, f"a {wrong[state]}, not a hash")
            continue
        _raise(count, pttl, raw, prior)
        if int(count) == 0:
            continue  # expired, or deleted since SCAN saw it
        if raw is None:
            skipped.add(
                state,
                "no bookkeeping: written by another tool, or by a restate-redis before "
                "keyspace version 2 (its next session moves it in)",
            )
            continue
        try:
            meta = Meta.parse(raw)
        except ValueError as exc:
            skipped.add(state, str(exc))
            continue
        keys = int(count) - 1 - (1 if prior else 0)
        if keys > 0 or meta.workflow is not None:
            listed.append(
                ObjectInfo(
                    service,
                    key,
                    meta.workflow,
                    int(pttl) if int(pttl) >= 0 else None,
                    meta.version,
                    meta.size,
                    keys,
                    meta.changed_ms,
                )
            )
    return listed


class Sweep:
    """One pass over the objects whose keys match ``match``, on every master, in bounded
    steps; iterate it for batches of :class:`ObjectInfo` (each object once).

    ``services``: only objects of these services are listed. ``max_objects``: the sweep
    stops once it listed this many, and ``complete`` says so. Keys it skipped are in
    ``skipped``.
    """

    def __init__(
        self,
        client: Any,
        keyspace: Keyspace,
        match: str,
        *,
        services: Iterable[str] | None = None,
        max_objects: int | None = None,
        count: int = SCAN_COUNT,
        batch: int = BATCH,
    ) -> None:
        self.client = client
        self.keyspace = keyspace
        self.match = match
        self.services = None if services is None else frozenset(services)
        self.max_objects = max_objects
        self.count = count
        self.batch = batch
        self.skipped = SkippedKeys()
        self.complete = True
        self.listed = 0

    async def __aiter__(self) -> AsyncIterator[list[ObjectInfo]]:
        seen: set[tuple[str, str]] = set()  # SCAN may return a key twice; an object has two
        pending: list[tuple[str, str]] = []
        cursor = 0
        while True:
            cursor, keys = await scan_page(self.client, cursor, self.match, self.count)
            for redis_key in keys:
                parsed = parse(self.keyspace, redis_key, self.skipped)
                if parsed is None or parsed in seen:
                    continue
                if self.services is not None and parsed[0] not in self.services:
                    continue
                seen.add(parsed)
                pending.append(parsed)
            if len(pending) >= self.batch or (cursor == 0 and pending):
                found = await classify(self.client, self.keyspace, pending, self.skipped)
                pending = []
                full = self.max_objects is not None and self.listed + len(found) >= self.max_objects
                if full:
                    room = max(0, (self.max_objects or 0) - self.listed)
                    self.complete = cursor == 0 and len(found) <= room
                    found = found[:room]
                self.listed += len(found)
                if found:
                    yield found
                if full:
                    return
            if cursor == 0:
                return


async def measure(
    client: Any,
    keyspace: Keyspace,
    *,
    services: Iterable[str] | None = None,
    byte_limit: int,
    field_limit: int,
    top: int = 0,
    max_objects: int | None = None,
) -> Usage:
    """Each service's objects, state keys and stored bytes, and the ``top`` largest objects,
    from one sweep of the bookkeeping (no value is read).

    ``services``: only these (one sweep of the namespace, or of the one service's keys);
    ``byte_limit`` / ``field_limit``: the store's eager limits, for the flags.
    """
    wanted = None if services is None else sorted(set(services))
    if wanted is not None and len(wanted) == 1:
        match = keyspace.object_pattern(wanted[0], suffix="*")
    else:
        match = keyspace.all_pattern("*")
    sweep = Sweep(client, keyspace, match, services=wanted, max_objects=max_objects)
    totals: dict[str, ServiceInfo] = {}
    largest: list[tuple[int, str, str, ObjectInfo]] = []  # a min-heap of the top sizes
    unsized: list[tuple[int, str, str, ObjectInfo]] = []  # the top key counts of unsized
    async for batch in sweep:
        for obj in batch:
            info = totals.get(obj.service)
            if info is None:
                info = totals[obj.service] = ServiceInfo(obj.service)
            info.add(obj, obj.fit(byte_limit, field_limit))
            if top > 0:
                heap, rank = (unsized, obj.keys) if obj.size is None else (largest, obj.size)
                item = (rank, obj.service, obj.key, obj)
                if len(heap) < top:
                    heapq.heappush(heap, item)
                elif item[:3] > heap[0][:3]:
                    heapq.heapreplace(heap, item)
    return Usage(
        [totals[name] for name in sorted(totals)],
        [item[3] for item in sorted(largest, key=lambda it: (-it[0], it[1], it[2]))],
        [item[3] for item in sorted(unsized, key=lambda it: (-it[0], it[1], it[2]))],
        sweep.skipped,
        sweep.complete,
    )
