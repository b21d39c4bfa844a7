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
- ``{"$encrypted": "KEY-ID"}``: a whole value encrypted under a key the store does not have
  (no ``RESTATE_REDIS_KEYS``, or not that key id), or that does not decrypt; it is never
  shown as its ciphertext and cannot be changed here (an edit that changes it is refused
  with :class:`~restate_redis.errors.EncryptedValueError`; clearing it works).

Values pass through the store's codecs (see :mod:`restate_redis.codecs`): they are shown
decrypted and decompressed, and what is written is encoded like a handler's writes.

A marker is always an object with that one key. So that an application's own map can never
be mistaken for one, every map key made of one or more ``$`` followed by ``base64``,
``raw`` or ``encrypted`` is shown with one more ``$``, at any depth: the map
``{"$base64": "aGk="}`` shows as ``{"$$base64": "aGk="}``, ``{"$$raw": 1}`` as
``{"$$$raw": 1}``, and one ``$`` is taken off again when written. A ``"$base64"`` or
``"$raw"`` key anywhere else (beside other keys, holding a non-string, ``"$raw"`` inside a
value) is refused, and so is an ``"$encrypted"`` key anywhere; other ``$`` keys
(``"$ref"``) are shown as they are.

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
import unicodedata
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from ..backend.inventory import (
    SKIPPED_EXAMPLES,
    ObjectInfo,
    ServiceInfo,
    SkippedKeys,
    Sweep,
    Usage,
    classify,
    measure,
    parse,
    scan_page,
)
from ..backend.retry import redis_errors
from ..codecs import StoredBytes, inspect_stored
from ..errors import (
    CorruptStateError,
    EncryptedValueError,
    InvalidOptionError,
    InvalidPatchError,
    StateDecodeError,
    StateEncodeError,
    StateError,
    UnknownObjectError,
    VersionConflictError,
    where,
)
from ..history import ABSENT, NOT_KEPT, HistoryEntry, Origin
from ..keyspace import META_FIELD, Meta, ObjectKeys, check_key, check_service
from ..serde import BytesSerde, Serde
from ..session import Session
from ..store import RedisStateStore

BYTES_MARK = "$base64"
RAW_MARK = "$raw"
ENCRYPTED_MARK = "$encrypted"

_RAW = BytesSerde()  # the serde's bytes: the store's codecs apply
_STORED = StoredBytes()  # the bytes as Redis holds them
# An edit waits for the lease; a completed workflow's expiry is re-read under it and the
# edit retried when it moved by more than this, so an edit keeps the remaining retention.
_EXPIRY_SLACK_MS = 1000
_EXPIRY_ATTEMPTS = 3

__all__ = [
    "BYTES_MARK",
    "ENCRYPTED_MARK",
    "RAW_MARK",
    "SKIPPED_EXAMPLES",
    "Admin",
    "ObjectInfo",
    "ObjectPage",
    "ObjectState",
    "Rekeyed",
    "Preview",
    "SORTS",
    "ServiceInfo",
    "ServiceList",
    "SkippedKeys",
    "Usage",
    "cut_preview",
    "decode_value",
    "json_text",
    "encode_value",
    "load_json",
    "same_value",
    "sort_objects",
]


# -- values as JSON ---------------------------------------------------------------------------


class _NotJson(Exception):
    """A decoded value holds something JSON has no form for."""


_MARKS = frozenset({BYTES_MARK, RAW_MARK, ENCRYPTED_MARK})
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
        if ENCRYPTED_MARK in value:
            raise _sealed_marker()
        return {k[1:] if _marker_shaped(k) else k: _from_json(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{value!r} is not a finite number; JSON has no form for it")
    return value


def _sealed_marker() -> ValueError:
    return ValueError(
        f'a {{"{ENCRYPTED_MARK}": ...}} marker stands for a value this tool cannot decrypt: '
        f"it cannot be written (set RESTATE_REDIS_KEYS to read and change encrypted values); "
        f'a map key named "{ENCRYPTED_MARK}" is written "${ENCRYPTED_MARK}"'
    )


def sealed_view(stored: bytes) -> dict[str, str]:
    """The view of an encrypted value that cannot be decrypted here: its key id only."""
    return {ENCRYPTED_MARK: inspect_stored(stored).key_id or "?"}


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
    if isinstance(value, dict) and ENCRYPTED_MARK in value:
        raise _sealed_marker()
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


# State keys per HPTTL when reading an object.
_TTL_BATCH = 1000


class ServiceList(list[ServiceInfo]):
    """What :meth:`Admin.services` returns: the services, and the keys it skipped."""

    def __init__(self, services: list[ServiceInfo], skipped: SkippedKeys) -> None:
        super().__init__(services)
        self.skipped = skipped


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
    """State key -> the bytes Redis holds (encrypted ones as ciphertext)."""
    values: dict[str, Any]
    """State key -> value as JSON data (sorted by state key)."""
    sealed: dict[str, str] = field(default_factory=dict)
    """State key -> why its value is shown as ``{"$encrypted": ...}``: it is encrypted under
    a key the store does not have, or does not decrypt."""
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

    @property
    def key_ids(self) -> dict[str, str]:
        """State key -> the id of the key its value is encrypted under (encrypted ones only)."""
        found = {name: inspect_stored(buf) for name, buf in self.raw.items()}
        return {name: info.key_id or "?" for name, info in found.items() if info.encrypted}


@dataclass(frozen=True, slots=True)
class Rekeyed:
    """What :meth:`Admin.rekey` did to one object (or would do, in a dry run)."""

    rewritten: int
    """Values (re-)encrypted under the current key."""
    current: int
    """Values already under the current key, left as they were."""
    found: dict[str, int] = field(default_factory=dict)
    """Values not under the current key, by the key id they were under ("plain" when not
    encrypted)."""


def _remaining(pttl: int) -> int | None:
    return int(pttl) if int(pttl) >= 0 else None


# -- tables of objects --------------------------------------------------------------------------

SORTS = ("key", "version", "size", "keys", "changed")
"""The columns a table of objects sorts by: the object key, its version, stored bytes, number
of state keys, time of the last change."""

PREVIEW_CHARS = 200
"""Characters of a value's JSON text a table cell shows."""
PREVIEW_READ_BYTES = 64 * 1024
"""A stored value larger than this is not read for a preview (only its size is shown)."""

UNSAFE_IN_JSON = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
"""What JSON text keeps raw (json.dumps escapes C0 controls) but must not reach a terminal or a
page as it is: DEL, C1 controls, the bidi marks, overrides and isolates, the line and paragraph
separators; each is written ``\\uXXXX`` instead (still valid JSON)."""


def json_text(value: Any) -> str:
    """``value`` as one line of JSON text, every character in :data:`UNSAFE_IN_JSON` escaped."""
    text = json.dumps(value, ensure_ascii=False)
    return UNSAFE_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


# Characters that belong to the one before them (combining marks and enclosing marks are
# found by category): a cut never separates them from it.
_JOINING = frozenset({"\u200c", "\u200d"})  # ZWNJ, ZWJ


def _extends(char: str) -> bool:
    code = ord(char)
    return (
        unicodedata.category(char) in ("Mn", "Me", "Mc")
        or char in _JOINING
        or 0xFE00 <= code <= 0xFE0F  # variation selectors
        or 0xE0100 <= code <= 0xE01EF
        or 0x1F3FB <= code <= 0x1F3FF  # emoji skin tones
        or 0xE0020 <= code <= 0xE007F  # tag characters (flag sequences)
    )


def _regional(char: str) -> bool:
    return 0x1F1E6 <= ord(char) <= 0x1F1FF


def cut_preview(text: str, limit: int = PREVIEW_CHARS) -> tuple[str, bool]:
    """``text`` (JSON text) cut to at most ``limit`` characters: (the text, whether it was cut).

    The cut never splits a JSON escape (``\\n``, ``\\u00e9``), nor a character from the marks
    that extend it (combining accents, a zero-width joiner and what it joins, variation
    selectors, skin tones, flag pairs), so what is shown is whole characters; strings are
    code points here, so no UTF-8 sequence or UTF-16 surrogate pair can be split either.
    """
    if len(text) <= limit:
        return text, False
    cut = 0
    while cut < limit:  # whole escapes only
        step = (6 if text[cut + 1 : cut + 2] == "u" else 2) if text[cut] == "\\" else 1
        if cut + step > limit:
            break
        cut += step
    while cut > 0 and (_extends(text[cut]) or text[cut - 1] in _JOINING):
        cut -= 1
    if cut > 0 and _regional(text[cut]) and _regional(text[cut - 1]):
        run = 0
        while cut - run - 1 >= 0 and _regional(text[cut - run - 1]):
            run += 1
        cut -= run % 2  # an odd run before the cut: its last one pairs with text[cut]
    return text[:cut], True


@dataclass(frozen=True, slots=True)
class Preview:
    """A state key's value as a table cell shows it."""

    size: int
    """Stored bytes of the value."""
    text: str | None
    """Its JSON text, cut at :data:`PREVIEW_CHARS` characters (:func:`cut_preview`); None
    when the stored value is larger than :data:`PREVIEW_READ_BYTES` and was not read."""
    truncated: bool


def sort_objects(rows: Sequence[ObjectInfo], by: str, descending: bool = False) -> list[ObjectInfo]:
    """``rows`` sorted by one of :data:`SORTS`; objects whose size or time of the last change
    is unknown come last in either order, and ties go by object key."""
    if by not in SORTS:
        raise ValueError(f"cannot sort by {by!r}: expected one of {', '.join(SORTS)}")
    by_key = sorted(rows, key=lambda o: o.key)
    if by == "key":
        return by_key[::-1] if descending else by_key
    value: Callable[[ObjectInfo], int | None] = {
        "version": lambda o: o.version,
        "size": lambda o: o.size,
        "keys": lambda o: o.keys,
        "changed": lambda o: o.changed_ms,
    }[by]
    known = [o for o in by_key if value(o) is not None]
    unknown = [o for o in by_key if value(o) is None]
    known.sort(key=lambda o: value(o) or 0, reverse=descending)  # stable: ties by key
    return known + unknown


# -- the admin API ----------------------------------------------------------------------------


class Admin:
    """Lists, reads and edits the state kept by one :class:`RedisStateStore`."""

    def __init__(self, store: RedisStateStore, origin: Origin = "cli") -> None:
        self.store = store
        self.origin: Origin = origin
        """What the history entries of this tool's edits name as their origin."""
        self.client = store.client
        self.keyspace = store.keyspace

    # reads

    async def services(self) -> ServiceList:
        """Every service with stored objects, sorted by name, with their totals (one sweep
        of the namespace's bookkeeping; see :meth:`usage`).

        An object counts when its state hash exists or it is a workflow (see
        :meth:`list_objects`); keys restate-redis did not write are skipped and reported in
        the result's ``skipped``.
        """
        found = await self.usage()
        return ServiceList(found.services, found.skipped)

    async def usage(
        self, services: Sequence[str] | None = None, *, top: int = 0, max_objects: int | None = None
    ) -> Usage:
        """Objects, state keys and stored bytes per service, and the ``top`` largest objects,
        from the bookkeeping the commits keep (meta ``b``, ``HLEN``): no value is read.

        ``services``: only these (default: every service). Objects are flagged against the
        store's ``eager_state_size_limit`` and ``eager_state_field_limit``; an object whose
        stored size is unknown (state written by another tool) is counted apart, never as 0.
        ``max_objects`` stops the sweep after that many objects (``complete`` is then False).
        """
        if services is not None:
            for name in services:
                check_service(name)
        if top < 0:
            raise ValueError(f"top must be >= 0, got {top!r}")
        what = "measuring " + (
            "the namespace"
            if services is None
            else f"service{'s' * (len(services) != 1)} "
            + ", ".join(repr(name) for name in services)
        )
        async with redis_errors(what):
            return await measure(
                self.client,
                self.keyspace,
                services=services,
                byte_limit=self.store.eager_state_size_limit,
                field_limit=self.store.eager_state_field_limit,
                top=top,
                max_objects=max_objects,
            )

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
        """One page of ``service``'s objects whose key starts with ``prefix``, with their
        bookkeeping (version, size, key count, time of the last change).

        An object is listed when its state hash exists, or when it is a workflow (its meta
        has a status): a cleared object is not. Keys restate-redis did not write are left
        out and counted in the page's ``skipped``.

        SCAN underneath, on every master of a cluster in turn (the cursor says which; see
        :func:`restate_redis.backend.inventory.scan_page`): a page holds at least ``limit``
        objects unless the listing ends (it may hold a few more), and an object may show up
        on two pages.
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
                cursor, batch = await scan_page(self.client, cursor, pattern, max(limit, 100))
                found: list[tuple[str, str]] = []
                for redis_key in batch:
                    parsed = parse(self.keyspace, redis_key, skipped)
                    if parsed is not None and parsed[0] == service and parsed[1] not in seen:
                        seen.add(parsed[1])
                        found.append(parsed)
                objects += await classify(self.client, self.keyspace, found, skipped)
                if cursor == 0 or len(objects) >= limit:
                    break
        objects.sort(key=lambda o: o.key)
        return ObjectPage(objects, int(cursor), skipped)

    async def object_rows(
        self, service: str, prefix: str = "", *, max_objects: int | None = None
    ) -> tuple[list[ObjectInfo], bool, SkippedKeys]:
        """Every object of ``service`` whose key starts with ``prefix``, with its bookkeeping
        (one sweep; no value is read): (the objects, whether the sweep saw them all or stopped
        at ``max_objects``, the keys it skipped)."""
        check_service(service)
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, got {type(prefix).__name__}")
        sweep = Sweep(
            self.client,
            self.keyspace,
            self.keyspace.object_pattern(service, prefix, suffix="*"),
            services=[service],
            max_objects=max_objects,
        )
        rows: list[ObjectInfo] = []
        async with redis_errors(f"listing the objects of service {service!r}"):
            async for batch in sweep:
                rows += batch
        return rows, sweep.complete, sweep.skipped

    async def previews(
        self,
        service: str,
        keys: Sequence[str],
        names: Sequence[str],
        *,
        chars: int = PREVIEW_CHARS,
        max_bytes: int = PREVIEW_READ_BYTES,
    ) -> list[dict[str, Preview | None]]:
        """For each object key of ``service``, the values of state keys ``names`` as previews
        (None where the object has no such key), in two pipelined round trips: the stored
        sizes (``HSTRLEN``), then the values not larger than ``max_bytes``."""
        states = [self.keyspace.object_keys(service, key).state for key in keys]
        if not states or not names:
            return [{} for _ in states]
        async with redis_errors(f"reading values of service {service!r}"):
            pipe = self.client.pipeline(transaction=False)
            for state in states:
                for name in names:
                    pipe.hstrlen(state, name)
            sizes = await pipe.execute()
            wanted = [
                (i, j)
                for i in range(len(states))
                for j in range(len(names))
                if 0 < sizes[i * len(names) + j] <= max_bytes
            ]
            pipe = self.client.pipeline(transaction=False)
            for i, j in wanted:
                pipe.hget(states[i], names[j])
            values = dict(zip(wanted, await pipe.execute(), strict=True)) if wanted else {}
        rows: list[dict[str, Preview | None]] = []
        for i in range(len(states)):
            row: dict[str, Preview | None] = {}
            for j, name in enumerate(names):
                size = int(sizes[i * len(names) + j])
                raw = values.get((i, j))
                if raw is None and size == 0:
                    row[name] = None  # no such key (an empty stored value is not a value)
                elif raw is None:
                    row[name] = Preview(size, None, True)
                else:
                    value = decode_value(self.store.serde, raw)
                    text, cut = cut_preview(json_text(value), chars)
                    row[name] = Preview(size, text, cut)
            rows.append(row)
        return rows

    async def read(self, service: str, key: str) -> ObjectState:
        """The whole state of ``service``/``key`` with its version, status and expiry.

        An object that never stored anything reads as empty with ``exists=False``.
        """
        try:
            async with self.store.object(service, key, shared=True) as session:
                raw: dict[str, bytes] = await session.get_all(serde=_STORED)
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
            pipe.hget(keys.state, META_FIELD)
            pipe.pttl(keys.state)
            pipe.exists(keys.ttls)
            meta, pttl, timed = await pipe.execute()
            expiries = await self._expiries(keys, list(raw)) if timed else {}
        exists = meta is not None
        if exists and Meta.parse(meta).fading:  # the bookkeeping's grace period (after the
            pttl = -1  # state, or its last expiring key, is gone): no expiry of the state
        raw = dict(sorted(raw.items()))
        values: dict[str, Any] = {}
        sealed: dict[str, str] = {}
        for name, buf in raw.items():
            plain, why = self._open(service, key, name, buf)
            if plain is None:
                sealed[name] = why
                values[name] = sealed_view(buf)
            else:
                values[name] = decode_value(self.store.serde, plain)
        return ObjectState(
            service,
            key,
            bool(exists),
            version,
            status,
            _remaining(pttl),
            raw,
            values,
            sealed,
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
            stored = await session.get(name, serde=_STORED)
        if stored is None:
            raise UnknownObjectError(f"{where(service, key, name)} does not exist")
        return self._view(service, key, name, stored)

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
            self._write(session, await session.get_all(serde=_STORED), state)

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
            current: dict[str, bytes] = await session.get_all(serde=_STORED)
            doc = {n: self._view(service, key, n, buf) for n, buf in current.items()}
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

    async def rekey(self, service: str, key: str, *, dry_run: bool = False) -> Rekeyed:
        """Encrypt every value of one object that is not under the current key with it (plain
        and compressed values included; compression is kept), in one exclusive session under
        the object's lease, so that no handler's write is lost. Values already under the
        current key are left without a write, so running it again does nothing: an
        interrupted run is resumed by running it again. ``dry_run``: read only (a shared
        session) and count. Needs a store with :class:`~restate_redis.Encryption`.
        """
        codec = self.store.codec
        encryption = codec.encryption
        if encryption is None:
            raise InvalidOptionError(
                "rekey needs the encryption keys: the store has no Encryption (the CLI reads "
                "them from RESTATE_REDIS_KEYS or RESTATE_REDIS_KEYS_FILE)"
            )

        def tally(stored: Mapping[str, bytes], rewritten: int) -> Rekeyed:
            found: Counter[str] = Counter()
            for buf in stored.values():
                info = inspect_stored(buf)
                if not codec.is_current(buf):
                    found[(info.key_id or "?") if info.encrypted else "plain"] += 1
            current = len(stored) - sum(found.values())
            return Rekeyed(rewritten, current, dict(sorted(found.items())))

        if dry_run:
            async with self.store.object(service, key, shared=True) as session:
                return tally(await session.get_all(serde=_STORED), 0)
        done: list[Rekeyed] = []

        async def change(session: Session) -> None:
            stored: dict[str, bytes] = await session.get_all(serde=_STORED)
            rewritten = 0
            for name, buf in stored.items():
                new = codec.reseal(buf, service, key, name)
                if new is not None:
                    session.set(name, new, serde=_STORED)
                    rewritten += 1
            done.append(tally(stored, rewritten))

        await self._edit(service, key, None, False, change)
        return done[-1] if done else Rekeyed(0, 0)

    async def clear_service(self, service: str, *, concurrency: int = 16) -> int:
        """Clear the state of every object of ``service``; returns how many held state.

        Each object is cleared in its own exclusive session (its own lease and commit), up to
        ``concurrency`` at a time. When some fail (a handler held one past the timeout) the
        others are still cleared, then a StateError tells how many failed and why.
        """
        limit = asyncio.Semaphore(concurrency)

        async def one(key: str) -> bool:
            async with (
                limit,
                self.store.object(service, key, state_preload=False, origin=self.origin) as session,
            ):
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

    # history

    async def history(
        self, service: str, key: str, since_version: int | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """The object's history entries, oldest first, as JSON data (:meth:`entry_view`)."""
        entries = await self.store.history(service, key, since_version, limit)
        return [self.entry_view(entry) for entry in entries]

    async def bookkeeping(self, service: str, key: str) -> Meta:
        """The object's bookkeeping (version, last commit, ...): ``Meta()`` when it has none."""
        keys = self.keyspace.object_keys(check_service(service), check_key(service, key))
        async with redis_errors(f"reading {keys.state!r}"):
            raw: bytes | None = await self.client.hget(keys.state, META_FIELD)  # type: ignore[assignment]
        try:
            return Meta.parse(raw)
        except ValueError as exc:
            raise CorruptStateError(f"{keys.state!r}: {exc}") from exc

    def entry_view(self, entry: HistoryEntry) -> dict[str, Any]:
        """One history entry as JSON data: ``version``, ``at`` (ISO 8601, UTC), ``origin``,
        ``commit_id``, ``cleared_all``, ``values_kept`` and ``changes`` {state key: {"old":
        value, "new": value}}, where a side is left out when the key did not exist (or, with
        ``values_kept`` false, when the values were not kept). Values as :meth:`read` shows
        them."""
        changes: dict[str, dict[str, Any]] = {}
        for name, change in entry.changes.items():
            shown: dict[str, Any] = {}
            for side, raw in (("old", change.old_bytes), ("new", change.new_bytes)):
                if raw is not ABSENT and raw is not NOT_KEPT:
                    shown[side] = self.stored_view(entry.service, entry.key, name, raw)
            changes[name] = shown
        return {**self.entry_head(entry), "changes": changes}

    def entry_head(self, entry: HistoryEntry) -> dict[str, Any]:
        """What :meth:`entry_view` holds besides the changes."""
        return {
            "version": entry.version,
            "at": entry.at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "origin": entry.origin,
            "commit_id": entry.commit_id,
            "cleared_all": entry.cleared_all,
            "values_kept": entry.values_kept,
        }

    def stored_view(self, service: str, key: str, name: str, stored: bytes) -> Any:
        """A value as Redis stores it, shown as :meth:`read` shows values (JSON data; an
        encrypted value this store cannot decrypt as ``{"$encrypted": key id}``)."""
        return self._view(service, key, name, stored)

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
            # lease_on_enter: the checks below read the bookkeeping under the lease
            async with self.store.object(
                service, key, ttl=ttl, state_preload=eager, lease_on_enter=True, origin=self.origin
            ) as session:
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
        async with redis_errors(f"reading {keys.state!r}"):
            pipe = self.client.pipeline(transaction=False)
            pipe.hget(keys.state, META_FIELD)
            pipe.pttl(keys.state)
            meta, pttl = await pipe.execute()
        try:
            fading = meta is not None and Meta.parse(meta).fading
        except ValueError as exc:
            raise CorruptStateError(f"{keys.state!r}: {exc}") from exc
        return meta is not None, -1 if fading else int(pttl)

    def _open(self, service: str, key: str, name: str, stored: bytes) -> tuple[bytes | None, str]:
        """(the serde's bytes, "") of a stored value, or (None, why) for an encrypted value
        that cannot be decrypted here. A value no codec can read otherwise comes back as it
        is stored (then shown as ``$raw`` when the serde cannot read it either)."""
        try:
            return self.store.codec.decode(stored, service, key, name), ""
        except StateDecodeError as exc:
            if isinstance(exc, EncryptedValueError) or inspect_stored(stored).encrypted:
                return None, str(exc)
            return stored, ""

    def _view(self, service: str, key: str, name: str, stored: bytes) -> Any:
        plain, _ = self._open(service, key, name, stored)
        return sealed_view(stored) if plain is None else decode_value(self.store.serde, plain)

    def _write(
        self, session: Session, current: Mapping[str, bytes], state: Mapping[str, Any]
    ) -> None:
        for name in current:
            if name not in state:
                session.clear(name)
        for name, value in state.items():
            if not self._unchanged(session, name, current.get(name), value):
                session.set(name, self._encode(session, name, value), serde=_RAW)

    async def _put(
        self, session: Session, name: str, value: Any, ttl: float | timedelta | None = None
    ) -> None:
        if ttl is not None:  # a new expiry is a change even for an equal value
            session.set(name, self._encode(session, name, value), serde=_RAW, ttl=ttl)
            return
        stored = await session.get(self._name(session, name), serde=_STORED)
        if not self._unchanged(session, name, stored, value):
            session.set(name, self._encode(session, name, value), serde=_RAW)

    def _name(self, session: Session, name: Any) -> str:
        if not isinstance(name, str):
            raise StateEncodeError(
                f"state key of {where(session.service, session.key())} must be a str"
            )
        return name

    def _unchanged(self, session: Session, name: str, stored: bytes | None, value: Any) -> bool:
        """Whether ``value`` is the value as shown; an encrypted value this tool cannot
        decrypt may only be left as it is (its marker) or cleared."""
        if stored is None:
            return False
        service, key = session.service, session.key()
        plain, why = self._open(service, key, name, stored)
        if plain is None:
            if same_value(sealed_view(stored), value):
                return True
            raise EncryptedValueError(
                f"{where(service, key, name)} is encrypted and cannot be changed here: {why}; "
                f"nothing was written",
                inspect_stored(stored).key_id,
            )
        # Decoded, not re-encoded: other encoders (float32, wide ints, another map order,
        # JSON with other spacing) write other bytes for the same value.
        return same_value(decode_value(self.store.serde, plain), value)

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
