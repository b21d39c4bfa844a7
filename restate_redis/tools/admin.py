"""Inspect and edit stored state from outside a handler: what the CLI and the web UI call.

Reads open a shared session (no lease), so they never wait for a running handler. Every
change runs inside an exclusive session on the object: it takes the object's lease exactly
like a handler, waits up to the store's ``acquire_timeout`` (then
:class:`~restate_redis.errors.LeaseTimeoutError`) and lands as one atomic commit, so an edit
never interleaves with a handler's invocation.

Optimistic version check: a caller that read the state at version ``v`` passes
``expected_version=v``; inside the exclusive session the object's current version is
compared with it and on a mismatch :class:`~restate_redis.errors.VersionConflictError` is
raised and nothing is written. ``expected_version=None`` skips the check (``--force``).

Values are shown as JSON, decoded with the store's serde. Two markers keep what JSON cannot
express, and are turned back into the same bytes when written:

- ``{"$base64": "..."}``: a bytes value (e.g. msgpack ``bin``) anywhere inside a value;
  written back through the serde as bytes.
- ``{"$raw": "..."}``: a whole stored value the serde cannot decode (or that holds types
  JSON has no form for); written back verbatim, bypassing the serde.

A marker is always an object with that one key. So that an application's own map can never
be mistaken for one, every map key made of one or more ``$`` followed by ``base64`` or
``raw`` is shown with one more ``$``, at any depth: the map ``{"$base64": "aGk="}`` shows as
``{"$$base64": "aGk="}``, ``{"$$raw": 1}`` as ``{"$$$raw": 1}``, and one ``$`` is taken off
again when written. A ``"$base64"`` or ``"$raw"`` key anywhere else (beside other keys,
holding a non-string, ``"$raw"`` inside a value) is refused; other ``$`` keys (``"$ref"``)
are shown as they are.

Numbers JSON cannot carry faithfully (NaN, Infinity, or a literal too large for a float
such as ``1e999``) are refused on the way in, by :func:`load_json` and by the writes.

An edit compares each value it is given with the value as shown (the decoded JSON view,
strictly: ``1``, ``1.0`` and ``true`` differ) and writes only the state keys whose value
changed, so the bytes of every other key stay exactly as their encoder wrote them.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
import re
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from ..backend.retry import redis_errors
from ..errors import (
    CorruptStateError,
    InvalidPatchError,
    StateEncodeError,
    StateError,
    UnknownObjectError,
    VersionConflictError,
    where,
)
from ..keyspace import (
    META,
    META_GRACE,
    META_VERSION,
    META_WORKFLOW,
    SEPARATOR,
    STATE,
    ObjectKeys,
    check_key,
    check_service,
)
from ..serde import BytesSerde, Serde
from ..session import Session
from ..store import RedisStateStore

BYTES_MARK = "$base64"
RAW_MARK = "$raw"

_RAW = BytesSerde()
# An edit waits for the lease; a completed workflow's expiry is re-read under it and the
# edit retried when it moved by more than this, so an edit keeps the remaining retention.
_EXPIRY_SLACK_MS = 1000
_EXPIRY_ATTEMPTS = 3

__all__ = [
    "BYTES_MARK",
    "RAW_MARK",
    "Admin",
    "ObjectInfo",
    "ObjectPage",
    "ObjectState",
    "ServiceInfo",
    "ServiceList",
    "SkippedKeys",
    "decode_value",
    "encode_value",
    "load_json",
    "same_value",
]


# -- values as JSON ---------------------------------------------------------------------------


class _NotJson(Exception):
    """A decoded value holds something JSON has no form for."""


_MARKS = frozenset({BYTES_MARK, RAW_MARK})
_MARKER_NAMES = frozenset(mark.lstrip("$") for mark in _MARKS)


def _marker_shaped(name: str) -> bool:
    """``$base64``, ``$$raw``, ...: a map key that takes one more ``$`` in the view."""
    return name.startswith("$") and name.lstrip("$") in _MARKER_NAMES


def _misused(mark: str) -> ValueError:
    return ValueError(
        f'a {{"{mark}": ...}} marker must be an object with that one key holding a base64 '
        f"string{' and stand for a whole value' if mark == RAW_MARK else ''}; "
        f'a map key named "{mark}" is written "${mark}"'
    )


def _to_json(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _NotJson(repr(value))
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return {BYTES_MARK: base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, list | tuple):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str):  # JSON would turn it into a str: no round trip
                raise _NotJson(f"map key of type {type(k).__name__}")
            out["$" + k if _marker_shaped(k) else k] = _to_json(v)
        return out
    raise _NotJson(type(value).__name__)


def _from_json(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return [_from_json(v) for v in value]
    if isinstance(value, dict):
        if BYTES_MARK in value:
            if len(value) != 1 or not isinstance(value[BYTES_MARK], str):
                raise _misused(BYTES_MARK)
            return _b64(value[BYTES_MARK], BYTES_MARK)
        if RAW_MARK in value:
            raise _misused(RAW_MARK)
        return {k[1:] if _marker_shaped(k) else k: _from_json(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{value!r} is not a finite number; JSON has no form for it")
    return value


def _b64(text: str, mark: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError(f'"{mark}" holds invalid base64: {exc}') from None


def decode_value(serde: Serde[Any], raw: bytes) -> Any:
    """A stored value as JSON data (see the module docstring for the markers)."""
    try:
        return _to_json(serde.deserialize(raw))
    except Exception:
        return {RAW_MARK: base64.b64encode(raw).decode("ascii")}


def encode_value(serde: Serde[Any], value: Any) -> bytes:
    """Inverse of :func:`decode_value`: the bytes to store for JSON data ``value``.

    Raises ValueError or TypeError when the value cannot be encoded.
    """
    if isinstance(value, dict) and RAW_MARK in value:
        if len(value) != 1 or not isinstance(value[RAW_MARK], str):
            raise _misused(RAW_MARK)
        return _b64(value[RAW_MARK], RAW_MARK)
    buf = serde.serialize(_from_json(value))
    if not isinstance(buf, bytes | bytearray | memoryview):
        raise TypeError(f"{type(serde).__name__}.serialize returned {type(buf).__name__}")
    return bytes(buf)


def _kind(value: Any) -> type:
    # tuples are lists to JSON; bool is not an int here, unlike in Python
    if isinstance(value, tuple):
        return list
    if isinstance(value, Mapping):
        return dict
    return type(value)


def same_value(a: Any, b: Any) -> bool:
    """Whether two JSON views are the same value, as JSON sees it.

    Stricter than ``==``: ``1``, ``1.0`` and ``true`` differ, and so do ``0.0`` and
    ``-0.0``; map key order does not matter.
    """
    if _kind(a) is not _kind(b):
        return False
    if isinstance(a, Mapping):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    return bool(a == b)


class _NonFinite(Exception):
    pass


def _refuse_constant(text: str) -> Any:
    raise _NonFinite(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NonFinite(text)
    return value


# Outside strings, the tokens the parser hands to its float or constant hooks.
_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|-?(?:Infinity|NaN)|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?')


def _non_finite_at(text: str) -> int:
    for match in _TOKENS.finditer(text):
        token = match.group()
        if token.startswith('"') or not any(c in token for c in ".eEIN"):
            continue
        if not math.isfinite(float(token)):
            return match.start()
    return 0


def load_json(text: str) -> Any:
    """Parse JSON text, refusing NaN, Infinity and numbers too large for a float.

    Raises :class:`json.JSONDecodeError` (a ValueError) whose message gives the line and
    column of the first problem.
    """
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except _NonFinite as exc:
        raise json.JSONDecodeError(
            f"{exc} is not a finite number, which JSON cannot carry", text, _non_finite_at(text)
        ) from None


# -- what reads return ------------------------------------------------------------------------


# How many skipped keys a listing names; the rest are only counted.
SKIPPED_EXAMPLES = 5
# Objects classified per pipeline while listing.
_CLASSIFY_BATCH = 500
# State keys per HPTTL when reading an object.
_TTL_BATCH = 1000


@dataclass(slots=True)
class SkippedKeys:
    """Keys of the namespace a listing skipped: restate-redis did not write them (a name
    that does not decode, a ``meta`` that is not a hash or whose version is not a number, a
    state hash without ``meta``). Counted, and a few of them named, so that one stray key
    cannot break a listing for everyone."""

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
class ServiceInfo:
    """A service that has stored objects, and how many."""

    name: str
    objects: int


class ServiceList(list[ServiceInfo]):
    """What :meth:`Admin.services` returns: the services, and the keys it skipped."""

    def __init__(self, services: list[ServiceInfo], skipped: SkippedKeys) -> None:
        super().__init__(services)
        self.skipped = skipped


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One object or workflow in a listing."""

    service: str
    key: str
    workflow_status: str | None = None
    """None for a Virtual Object; "running" or "completed" for a workflow."""
    retention_ms: int | None = None
    """Milliseconds until the object's keys expire; None when they are kept indefinitely."""

    @property
    def kind(self) -> str:
        return "object" if self.workflow_status is None else "workflow"


@dataclass(frozen=True, slots=True)
class ObjectPage:
    """One page of a listing; ``cursor`` continues it, 0 when the listing is complete."""

    objects: list[ObjectInfo]
    cursor: int
    skipped: SkippedKeys = field(default_factory=SkippedKeys)
    """Keys of this page that restate-redis did not write, left out of it."""


@dataclass(frozen=True, slots=True)
class ObjectState:
    """An object's or workflow's state as stored, with its version and expiry."""

    service: str
    key: str
    exists: bool
    """False when nothing was ever committed for this object (or it expired)."""
    version: int
    workflow_status: str | None
    retention_ms: int | None
    raw: dict[str, bytes] = field(repr=False)
    values: dict[str, Any]
    """State key -> value as JSON data (sorted by state key)."""
    expiries: dict[str, int] = field(default_factory=dict)
    """State key -> milliseconds until it expires, for the keys with an expiry of their own
    (``set(..., ttl=...)``); the others are not in it."""

    @property
    def kind(self) -> str:
        return "object" if self.workflow_status is None else "workflow"

    @property
    def sizes(self) -> dict[str, int]:
        """State key -> stored bytes."""
        return {name: len(buf) for name, buf in self.raw.items()}


def _text(raw: bytes | str | None) -> str | None:
    if raw is None:
        return None
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw


def _is_int(raw: bytes | str) -> bool:
    text = _text(raw) or ""
    return text.lstrip("-").isdigit() and text.isascii()


def _remaining(pttl: int) -> int | None:
    return int(pttl) if int(pttl) >= 0 else None


# -- the admin API ----------------------------------------------------------------------------


class Admin:
    """Lists, reads and edits the state kept by one :class:`RedisStateStore`."""

    def __init__(self, store: RedisStateStore) -> None:
        self.store = store
        self.client = store.client
        self.keyspace = store.keyspace

    # reads

    async def services(self) -> ServiceList:
        """Every service with stored objects, sorted by name (one SCAN of the namespace).

        An object counts when its state hash exists or it is a workflow (see
        :meth:`list_objects`); keys restate-redis did not write are skipped and reported in
        the result's ``skipped``.
        """
        counts: Counter[str] = Counter()
        skipped = SkippedKeys()
        seen: set[tuple[str, str]] = set()
        batch: list[tuple[str, str]] = []

        async def flush() -> None:
            for info in await self._classify(batch, skipped):
                counts[info.service] += 1
            batch.clear()

        async with redis_errors("listing the services"):
            async for redis_key in self.client.scan_iter(
                match=self.keyspace.all_pattern("*"), count=1000
            ):
                parsed = self._parse(redis_key, skipped)
                if parsed is None or parsed in seen:
                    continue  # SCAN may return a key twice; an object has several keys
                seen.add(parsed)
                batch.append(parsed)
                if len(batch) >= _CLASSIFY_BATCH:
                    await flush()
            await flush()
        return ServiceList([ServiceInfo(name, counts[name]) for name in sorted(counts)], skipped)

    async def iter_objects(
        self, service: str, prefix: str = "", skipped: SkippedKeys | None = None
    ) -> AsyncIterator[str]:
        """The object keys of ``service`` starting with ``prefix``, streamed from SCAN.

        Each object once; keys restate-redis did not write are added to ``skipped``.
        """
        seen: set[str] = set()
        cursor = 0
        while True:
            page = await self.list_objects(service, prefix, cursor, limit=500)
            if skipped is not None:
                skipped.merge(page.skipped)
            for obj in page.objects:
                if obj.key not in seen:
                    seen.add(obj.key)
                    yield obj.key
            cursor = page.cursor
            if cursor == 0:
                return

    async def list_objects(
        self, service: str, prefix: str = "", cursor: int = 0, limit: int = 50
    ) -> ObjectPage:
        """One page of ``service``'s objects whose key starts with ``prefix``.

        An object is listed when its state hash exists, or when it is a workflow (its meta
        has a status): a cleared object is not. Keys restate-redis did not write are left
        out and counted in the page's ``skipped``.

        SCAN underneath: a page holds at least ``limit`` objects unless the listing ends
        (it may hold a few more), and an object may show up on two pages.
        """
        check_service(service)
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, got {type(prefix).__name__}")
        if cursor < 0 or limit <= 0:
            raise ValueError(f"bad page: cursor={cursor!r}, limit={limit!r}")
        pattern = self.keyspace.object_pattern(service, prefix, suffix="*")
        skipped = SkippedKeys()
        seen: set[str] = set()
        objects: list[ObjectInfo] = []
        async with redis_errors(f"listing the objects of service {service!r}"):
            for _ in range(100):  # bounded: a sparse keyspace returns empty batches
                cursor, batch = await self.client.scan(cursor, match=pattern, count=max(limit, 100))
                found: list[tuple[str, str]] = []
                for redis_key in batch:
                    parsed = self._parse(redis_key, skipped)
                    if parsed is not None and parsed[0] == service and parsed[1] not in seen:
                        seen.add(parsed[1])
                        found.append(parsed)
                objects += await self._classify(found, skipped)
                if cursor == 0 or len(objects) >= limit:
                    break
        objects.sort(key=lambda o: o.key)
        return ObjectPage(objects, int(cursor), skipped)

    def _parse(self, redis_key: bytes | str, skipped: SkippedKeys) -> tuple[str, str] | None:
        """(service, object key) of a ``state`` or ``meta`` key; None for other keys of an
        object. A key whose name restate-redis could not have written is added to
        ``skipped``: it does not decode, or decodes to a name that encodes differently."""
        try:
            text = redis_key.decode("utf-8") if isinstance(redis_key, bytes) else redis_key
            parsed = self.keyspace.parse(text)
        except (UnicodeError, ValueError):
            parsed = None
        if parsed is not None:
            service, key, kind = parsed
            prefix = f"{self.keyspace.namespace}{SEPARATOR}"
            try:
                canonical = prefix + self.keyspace.tag(service, key) + SEPARATOR + kind
            except (UnicodeError, ValueError):
                canonical = None
            if canonical == text and service:
                return (service, key) if kind in (STATE, META) else None
        skipped.add(redis_key, "its name does not decode")
        return None

    async def _classify(
        self, objects: list[tuple[str, str]], skipped: SkippedKeys
    ) -> list[ObjectInfo]:
        """The listed ones of ``objects``: their state hash exists or they are workflows.

        One pipeline: the type of both keys, the meta's version and status, its expiry.
        Objects whose bookkeeping restate-redis did not write go to ``skipped``.
        """
        if not objects:
            return []
        pipe = self.client.pipeline(transaction=False)
        for service, key in objects:
            keys = self.keyspace.object_keys(service, key)
            pipe.type(keys.state)
            pipe.type(keys.meta)
            pipe.hmget(keys.meta, [META_VERSION, META_WORKFLOW])
            pipe.pttl(keys.meta)
        replies = await pipe.execute(raise_on_error=False)
        listed: list[ObjectInfo] = []
        for i, (service, key) in enumerate(objects):
            state_type, meta_type, fields, pttl = replies[4 * i : 4 * i + 4]
            for reply in (state_type, meta_type, pttl):
                if isinstance(reply, Exception):
                    raise reply
            keys = self.keyspace.object_keys(service, key)
            state_type, meta_type = _text(state_type), _text(meta_type)
            if state_type not in ("hash", "none"):
                skipped.add(keys.state, f"a {state_type}, not a hash")
                continue
            if meta_type not in ("hash", "none"):
                skipped.add(keys.meta, f"a {meta_type}, not a hash")
                continue
            if meta_type == "none":
                if state_type == "hash":
                    skipped.add(keys.state, "state without meta")
                continue  # expired, or deleted since SCAN saw it
            if isinstance(fields, Exception):
                raise fields
            version, status = fields
            if version is not None and not _is_int(version):
                skipped.add(keys.meta, "its version is not a number")
                continue
            status_text = _text(status) or None
            if state_type == "hash" or status_text is not None:
                listed.append(ObjectInfo(service, key, status_text, _remaining(pttl)))
        return listed

    async def read(self, service: str, key: str) -> ObjectState:
        """The whole state of ``service``/``key`` with its version, status and expiry.

        An object that never stored anything reads as empty with ``exists=False``.
        """
        try:
            async with self.store.object(service, key, shared=True) as session:
                raw: dict[str, bytes] = await session.get_all(serde=_RAW)
                version, status = session.version, session.workflow_status
        except (ValueError, UnicodeError) as exc:
            if isinstance(exc, StateError):
                raise
            raise CorruptStateError(
                f"the bookkeeping of {where(service, key)} does not parse (restate-redis did "
                f"not write it): {exc}"
            ) from exc
        keys = session.keys
        async with redis_errors(f"reading {where(service, key)}"):
            pipe = self.client.pipeline(transaction=False)
            pipe.exists(keys.meta)
            pipe.pttl(keys.meta)
            pipe.hexists(keys.meta, META_GRACE)
            pipe.exists(keys.ttls)
            exists, pttl, grace, timed = await pipe.execute()
            expiries = await self._expiries(keys, list(raw)) if timed else {}
        if grace:  # the bookkeeping's grace period (after the state, or its last expiring
            pttl = -1  # key, is gone): no expiry of the state
        raw = dict(sorted(raw.items()))
        values = {name: decode_value(self.store.serde, buf) for name, buf in raw.items()}
        return ObjectState(
            service,
            key,
            bool(exists),
            version,
            status,
            _remaining(pttl),
            raw,
            values,
            expiries,
        )

    async def _expiries(self, keys: ObjectKeys, names: list[str]) -> dict[str, int]:
        """State key -> ms until it expires (HPTTL), for those of ``names`` that have an
        expiry of their own (none where the server has no field expiry)."""
        if not names or not (await self.store.backend.probe(keys.state)).field_expiry:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for i in range(0, len(names), _TTL_BATCH):
            batch = names[i : i + _TTL_BATCH]
            pipe.execute_command("HPTTL", keys.state, "FIELDS", len(batch), *batch)
        remaining = [ms for reply in await pipe.execute() for ms in reply]
        return {name: int(ms) for name, ms in zip(names, remaining, strict=True) if int(ms) >= 0}

    async def read_value(self, service: str, key: str, name: str) -> Any:
        """One state key's value as JSON data; UnknownObjectError when it is not stored."""
        async with self.store.object(service, key, shared=True, state_preload=[name]) as session:
            raw = await session.get(name, serde=_RAW)
        if raw is None:
            raise UnknownObjectError(f"{where(service, key, name)} does not exist")
        return decode_value(self.store.serde, raw)

    # changes

    async def replace(
        self,
        service: str,
        key: str,
        state: Mapping[str, Any],
        *,
        expected_version: int | None = None,
        must_exist: bool = True,
    ) -> int:
        """Make ``state`` (state key -> JSON data) the object's whole state, atomically.

        Keys not in ``state`` are cleared; a value that is the same as the one shown (see
        :func:`same_value`) is not rewritten, so its stored bytes stay as they are. Returns
        the object's version afterwards.
        """
        if not isinstance(state, Mapping):
            raise TypeError(f"the state must be a JSON object, got {type(state).__name__}")

        async def change(session: Session) -> None:
            self._write(session, await session.get_all(serde=_RAW), state)

        return await self._edit(service, key, expected_version, must_exist, change)

    async def set(
        self,
        service: str,
        key: str,
        name: str,
        value: Any,
        *,
        expected_version: int | None = None,
        must_exist: bool = False,
        ttl: float | timedelta | None = None,
    ) -> int:
        """Set one state key to JSON data ``value``; creates the object when needed.

        Only that key is read and written, and not even it when it already holds ``value``
        (unless ``ttl`` is given: the key then expires this long after the commit; without
        it a key that had an expiry keeps it only when its value is unchanged).
        """

        async def change(session: Session) -> None:
            await self._put(session, name, value, ttl)

        return await self._edit(service, key, expected_version, must_exist, change, eager=False)

    async def patch(
        self,
        service: str,
        key: str,
        patch: str | list[Any],
        *,
        expected_version: int | None = None,
        must_exist: bool = True,
    ) -> int:
        """Apply an RFC 6902 JSON Patch to the state seen as one JSON object.

        The patch is applied under the object's lease to the state it replaces, so no
        change in between can be lost; ``expected_version`` additionally pins the version.
        """
        try:
            import jsonpatch
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            raise ImportError(
                "JSON Patch needs the jsonpatch package: pip install 'restate-redis[cli]'"
            ) from exc
        try:
            ops = jsonpatch.JsonPatch.from_string(patch) if isinstance(patch, str) else patch
            compiled = ops if isinstance(ops, jsonpatch.JsonPatch) else jsonpatch.JsonPatch(ops)
        except (ValueError, TypeError, jsonpatch.JsonPatchException) as exc:
            raise InvalidPatchError(f"invalid JSON Patch: {exc}") from None
        if not isinstance(compiled.patch, list):
            raise InvalidPatchError("invalid JSON Patch: it must be a JSON array of operations")

        async def change(session: Session) -> None:
            current: dict[str, bytes] = await session.get_all(serde=_RAW)
            doc = {n: decode_value(self.store.serde, buf) for n, buf in current.items()}
            try:
                result = compiled.apply(doc)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
                raise InvalidPatchError(
                    f"the JSON Patch does not apply to {where(service, key)}: {exc}"
                ) from None
            except (KeyError, TypeError, ValueError, IndexError) as exc:
                raise InvalidPatchError(f"invalid JSON Patch: {exc!r}") from None
            if not isinstance(result, dict):
                raise InvalidPatchError(
                    f"the patched state of {where(service, key)} must stay a JSON object, "
                    f"got {type(result).__name__}"
                )
            self._write(session, current, result)

        return await self._edit(service, key, expected_version, must_exist, change)

    async def clear(
        self, service: str, key: str, name: str, *, expected_version: int | None = None
    ) -> int:
        """Delete one state key; UnknownObjectError when it is not stored."""

        async def change(session: Session) -> None:
            if name not in await session.state_keys():
                raise UnknownObjectError(f"{where(service, key, name)} does not exist")
            session.clear(name)

        return await self._edit(service, key, expected_version, True, change, eager=False)

    async def clear_all(
        self, service: str, key: str, *, expected_version: int | None = None
    ) -> int:
        """Delete every state key of one object or workflow."""

        async def change(session: Session) -> None:
            if await session.state_keys():
                session.clear_all()

        return await self._edit(service, key, expected_version, True, change, eager=False)

    async def purge(self, service: str, key: str) -> bool:
        """Remove one object or workflow entirely, bookkeeping included (see
        :meth:`RedisStateStore.purge`); True when anything was stored."""
        return await self.store.purge(service, key)

    async def clear_service(self, service: str, *, concurrency: int = 16) -> int:
        """Clear the state of every object of ``service``; returns how many held state.

        Each object is cleared in its own exclusive session (its own lease and commit), up to
        ``concurrency`` at a time. When some fail (a handler held one past the timeout) the
        others are still cleared, then a StateError tells how many failed and why.
        """
        limit = asyncio.Semaphore(concurrency)

        async def one(key: str) -> bool:
            async with limit, self.store.object(service, key, state_preload=False) as session:
                if not await session.state_keys():
                    return False
                session.clear_all()
                return True

        keys = [key async for key in self.iter_objects(service)]
        results = await asyncio.gather(*(one(key) for key in keys), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        cleared = sum(r is True for r in results)
        if failures:
            first = failures[0]
            if not isinstance(first, Exception):
                raise first
            raise StateError(
                f"cleared {cleared} of the {len(keys)} objects of service {service!r}; "
                f"{len(failures)} failed, the first with: {first}"
            ) from first
        return cleared

    # helpers

    async def _edit(
        self,
        service: str,
        key: str,
        expected_version: int | None,
        must_exist: bool,
        change: Callable[[Session], Awaitable[None]],
        *,
        eager: bool = True,
    ) -> int:
        """Run ``change`` in an exclusive session after the existence and version checks.

        ``eager=False`` for changes that never read values (set, clear): the session then
        loads nothing up front.
        """
        check_service(service)
        check_key(service, key)
        keys = self.keyspace.object_keys(service, key)
        ttl_ms = (await self._meta(keys))[1]
        for attempt in range(_EXPIRY_ATTEMPTS):
            # A completed workflow's keys expire: pass the remaining time on, so the
            # commit keeps it (and a recreated state hash gets it too).
            ttl = ttl_ms / 1000 if ttl_ms > 0 else None
            async with self.store.object(service, key, ttl=ttl, state_preload=eager) as session:
                exists, now_ms = await self._meta(keys)
                if not exists and must_exist:
                    raise UnknownObjectError(
                        f"{where(service, key)} does not exist "
                        f"(namespace {self.keyspace.namespace!r})"
                    )
                if expected_version is not None and session.version != expected_version:
                    raise VersionConflictError(
                        f"{where(service, key)} changed since it was read: it is at version "
                        f"{session.version}, the edit expected version {expected_version}; "
                        f"nothing was written"
                    )
                moved = (now_ms > 0) != (ttl_ms > 0) or abs(now_ms - ttl_ms) > _EXPIRY_SLACK_MS
                if moved and attempt < _EXPIRY_ATTEMPTS - 1:
                    ttl_ms = now_ms
                    continue  # nothing buffered yet: leaving the block releases the lease
                await change(session)
            return session.version
        raise AssertionError("unreachable")  # pragma: no cover

    async def _meta(self, keys: ObjectKeys) -> tuple[bool, int]:
        """(whether the object exists, ms until its keys expire or -1); the grace period of
        an emptied object's bookkeeping is no expiry of the object: an edit does not keep it."""
        async with redis_errors(f"reading {keys.meta!r}"):
            pipe = self.client.pipeline(transaction=False)
            pipe.exists(keys.meta)
            pipe.pttl(keys.meta)
            pipe.hexists(keys.meta, META_GRACE)
            exists, pttl, grace = await pipe.execute()
        return bool(exists), -1 if grace else int(pttl)

    def _write(
        self, session: Session, current: Mapping[str, bytes], state: Mapping[str, Any]
    ) -> None:
        for name in current:
            if name not in state:
                session.clear(name)
        for name, value in state.items():
            if not self._unchanged(current.get(name), value):
                session.set(name, self._encode(session, name, value), serde=_RAW)

    async def _put(
        self, session: Session, name: str, value: Any, ttl: float | timedelta | None = None
    ) -> None:
        buf = self._encode(session, name, value)
        if ttl is not None:
            session.set(name, buf, serde=_RAW, ttl=ttl)
        elif not self._unchanged(await session.get(name, serde=_RAW), value):
            session.set(name, buf, serde=_RAW)

    def _unchanged(self, stored: bytes | None, value: Any) -> bool:
        # Decoded, not re-encoded: other encoders (float32, wide ints, another map order,
        # JSON with other spacing) write other bytes for the same value.
        return stored is not None and same_value(decode_value(self.store.serde, stored), value)

    def _encode(self, session: Session, name: str, value: Any) -> bytes:
        if not isinstance(name, str):
            raise StateEncodeError(
                f"state key of {where(session.service, session.key())} must be a str"
            )
        try:
            return encode_value(self.store.serde, value)
        except Exception as exc:
            raise StateEncodeError(
                f"cannot encode value for {where(session.service, session.key(), name)} "
                f"with {type(self.store.serde).__name__}: {exc}"
            ) from exc
