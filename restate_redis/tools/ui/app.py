"""The web UI's ASGI app: a static page and the JSON API it uses.

The API (every answer is JSON; errors are ``{"error": message, "code": code}``)::

    GET    /api/services                            {"namespace", "limits", "services": [{"name",
                                                      "objects", "keys", "bytes", "unsized",
                                                      "lazy", "near"}], "skipped", "skipped_keys"}
    GET    /api/objects?service=S&prefix=P&cursor=C&limit=N
                                                    {"namespace", "objects": [ROW],
                                                     "cursor": "0" when complete,
                                                     "skipped", "skipped_keys"}
    GET    /api/table?service=S&prefix=P&sort=F&order=asc|desc&offset=N&limit=N&column=NAME...
                                                    {"namespace", "service", "prefix", "sort",
                                                     "order", "offset", "limit", "total",
                                                     "complete", "columns", "limits",
                                                     "objects": [ROW + "values": [{"size",
                                                       "preview", "truncated"} | null, ...]],
                                                     "skipped", "skipped_keys"}

ROW is ``{"key", "kind", "workflow_status", "retention_ms", "version", "size" (stored bytes,
null when unknown), "keys" (state keys), "changed_ms" (time of the last change, ms since the
epoch, or null), "load" ("eager", "near", "lazy" or "unknown": how an eager session opens it)}``.
``/api/table`` sorts every object of the service (whose key starts with P) by ``sort`` (key,
version, size, keys, changed; unknown sizes and times last), then answers the rows from
``offset``; ``values`` holds, per ``column`` asked (at most 10), that state key's value as a
preview of at most 200 characters of JSON text (cut at a character boundary, never inside an
escape; null when the value is over 64 KiB and was not read), or null when the object has no such
key. Its sweep stops at ``max_table_objects`` objects (``"complete": false``) and serves the
pages and sorts of the same table for 30 s; ``fresh=1`` sweeps again.
    GET    /api/state?service=S&key=K&offset=N      {"namespace", "service", "key", "exists",
                                                     "version",
                                                     "kind", "workflow_status", "retention_ms",
                                                     "keys": [{"name", "size", "ttl_ms",
                                                       "value" | "preview" + "truncated": true,
                                                       "encrypted": key id, "sealed": why}],
                                                     "expiring", "total_keys", "offset",
                                                     "next_offset"}
    GET    /api/value?service=S&key=K&name=N        one value as a JSON file (attachment)
    PUT    /api/value   {"service", "key", "name", "value", "version"}   set one state key
    DELETE /api/value   {"service", "key", "name", "version"}            clear one state key
    PUT    /api/state   {"service", "key", "state", "version"}           replace the state
    DELETE /api/state   {"service", "key", "version", "confirm": "delete"}  clear all
    GET    /api/history?service=S&key=K&limit=N     {"namespace", "service", "key", "version",
                                                     "kept", "restorable_from",
                                                     "entries": [ENTRY, ...] newest first}
    POST   /api/restore {"service", "key", "to_version", "version", "confirm": "restore"}
    GET    /api/watch?service=S&key=K&since=V       text/event-stream of ENTRY ("entry" events)

Changes answer ``{"version": new version}``. ``"version"`` is required in every change: the
version the caller read, or ``null`` to skip the check; a mismatch answers 409 with code
``version_conflict`` and writes nothing. Values are JSON as in :mod:`restate_redis.tools.admin`
(``{"$base64": ...}`` bytes, ``{"$raw": ...}`` undecodable); a body holding NaN, Infinity or
a number too large for a float (``1e999``) is refused. A value whose JSON text is over
64 KiB comes as a 2 000-character ``preview``; ``/api/value`` downloads all of it. An
encrypted value's entry names its key id (``"encrypted"``); one the UI cannot decrypt
(started without ``RESTATE_REDIS_KEYS``, or without that key) also says why (``"sealed"``),
its value is ``{"$encrypted": key id}``, and a change to it answers 403 with code
``encrypted``. One
``/api/state`` answer stays under ``max_response_bytes`` (default 4 MiB): when the keys do
not all fit, it holds the first ones from ``offset`` and ``next_offset`` continues (null on
the last page). ``ttl_ms`` is the time a state key has left when it has an expiry of its
own (``set(..., ttl=...)``), else null; ``expiring`` is true when any key of the object has
one. Listings leave out keys restate-redis did not write: ``"skipped"`` counts
them and ``"skipped_keys"`` names a few (both absent when none was skipped).

History (docs/guide/history.md): ``/api/history`` answers the last ``limit``
(default 100, at most 1000) entries of the object's history, newest first; ``"kept"`` is false
when the object has none (its workers' store keeps no history), ``"version"`` is the object's
current version and ``"restorable_from"`` the oldest version a restore can reach through the
entries shown (null when none). ENTRY is ``{"version", "at" (ISO 8601, UTC), "origin",
"commit_id", "cleared_all", "values_kept", "restorable", "changes": [{"name", "old", "new"}]}``
where ``old`` and ``new`` are each ``{"value": V}``, ``{"preview", "truncated": true}`` (over
64 KiB of JSON text), ``{"absent": true}`` (the key did not exist) or ``{"not_kept": true}``
(an entry over the history's ``max_entry_bytes``). ``/api/restore`` writes the state as it was
at ``to_version`` as a new commit (origin ``restore``, so it can be undone), after the
``"version"`` check like every change; further back than the history reaches answers 409
with code ``history_not_kept`` and a message saying how far back it goes. ``/api/watch``
streams Server-Sent Events: ``event: entry``, ``id:`` the entry's version, ``data:`` ENTRY,
for each commit after version ``since`` (or after the ``Last-Event-ID`` a reconnecting
EventSource sends; without either, from now on), a comment line every 15 s while idle, and
``event: failure`` with ``{"error", "code"}`` before it ends on an error. A stream lasts as
long as its client keeps it open; at most ``MAX_WATCHES`` run at once (then 503, code
``busy``).
Security (token, cross-site and DNS-rebinding checks) is in :mod:`restate_redis.tools.ui.security`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ...backend.connection import scrub
from ...backend.retry import as_state_error
from ...errors import (
    EncryptedValueError,
    HistoryNotKeptError,
    InvalidNameError,
    InvalidOptionError,
    InvalidPatchError,
    LeaseTimeoutError,
    StateEncodeError,
    StateError,
    StoreUnavailableError,
    UnknownObjectError,
    ValueTooLargeError,
    VersionConflictError,
)
from ...history import ABSENT, NOT_KEPT, HistoryEntry, reach
from ...keyspace import check_key, check_service
from ...store import RedisStateStore
from ..admin import SORTS, Admin, ObjectInfo, Preview, SkippedKeys, load_json, sort_objects
from .security import Guard

STATIC = Path(__file__).parent / "static"
PREVIEW_LIMIT = 64 * 1024  # characters of JSON text sent whole
PREVIEW_CHARS = 2000  # characters of a longer value's preview
CONFIRM_CLEAR_ALL = "delete"
CONFIRM_RESTORE = "restore"
DEFAULT_HISTORY_LIMIT = 100  # entries of one /api/history answer
MAX_HISTORY_LIMIT = 1000
MAX_WATCHES = 64  # event streams open at once: each holds a Redis connection in XREAD BLOCK
HEARTBEAT_SECONDS = 15.0  # an idle event stream sends a comment this often
DEFAULT_MAX_RESPONSE_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_TABLE_OBJECTS = 10_000
MAX_TABLE_PAGE = 500  # rows of one /api/table answer
MAX_TABLE_COLUMNS = 10  # state keys shown as columns
TABLE_CACHE_SECONDS = 30.0  # a table's sweep serves its pages and sorts this long
TABLE_CACHE_ENTRIES = 8
# What an /api/state answer holds besides its keys (names, version, ...): kept free.
_STATE_OVERHEAD = 1024

Handler = Callable[[Request], Awaitable[Response]]


class BadRequest(Exception):
    """A request the API cannot take (missing or mistyped field)."""


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "code": code}, status_code=status)


def api(handler: Handler) -> Handler:
    """Map the library's errors to HTTP answers with a clear message (never a secret of the
    Redis URL)."""

    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except Exception as exc:
            status, code, message = _failure(exc)
            url: str = getattr(request.app.state, "url", "") or ""
            return _error(status, code, scrub(message, url) if url else message)

    return wrapped


def _failure(exc: Exception) -> tuple[int, str, str]:
    """(status, code, message) of the answer to a request that raised ``exc``."""
    if isinstance(exc, BadRequest):
        return 400, "bad_request", str(exc)
    translated = as_state_error(exc, "Redis")
    if isinstance(translated, VersionConflictError):
        return 409, "version_conflict", str(translated)
    if isinstance(translated, HistoryNotKeptError):
        return 409, "history_not_kept", str(translated)
    if isinstance(translated, UnknownObjectError):
        return 404, "not_found", str(translated)
    if isinstance(translated, EncryptedValueError):
        return 403, "encrypted", str(translated)
    if isinstance(translated, LeaseTimeoutError):
        return 503, "busy", str(translated)
    if isinstance(
        translated,
        InvalidPatchError
        | InvalidNameError
        | InvalidOptionError
        | StateEncodeError
        | ValueTooLargeError,
    ):
        return 400, "bad_request", str(translated)
    if isinstance(translated, StoreUnavailableError):
        return 503, "redis_unavailable", f"Redis is not reachable: {translated}"
    if isinstance(translated, StateError):
        return 500, "state_error", str(translated)
    if isinstance(translated, OSError):
        return 503, "redis_unavailable", f"Redis is not reachable: {translated}"
    return 500, "internal_error", f"{type(exc).__name__}: {exc}"


def _admin(request: Request) -> Admin:
    admin: Admin = request.app.state.admin
    return admin


def _query(request: Request, name: str, default: str | None = None) -> str:
    value = request.query_params.get(name, default)
    if value is None:
        raise BadRequest(f"query parameter {name!r} is required")
    return value


async def _body(request: Request, *fields: str) -> dict[str, Any]:
    try:
        # strict: NaN, Infinity and 1e999 (a float overflow) are refused, not stored
        body = load_json((await request.body()).decode("utf-8"))
    except UnicodeDecodeError:
        raise BadRequest("the body is not UTF-8 text") from None
    except ValueError as exc:
        raise BadRequest(f"bad JSON in the body: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    for name in ("service", "key", *fields):
        if name not in body:
            raise BadRequest(f"field {name!r} is required")
    for name in ("service", "key", "name"):
        if name in body and not isinstance(body[name], str):
            raise BadRequest(f"field {name!r} must be a string")
    if "version" in fields:
        version = body["version"]
        if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
            raise BadRequest("field 'version' must be an integer, or null to skip the check")
    return body


def _int(text: str, name: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise BadRequest(f"query parameter {name!r} must be an integer") from None
    if value < minimum:
        raise BadRequest(f"query parameter {name!r} must be at least {minimum}")
    return value


# -- reads --------------------------------------------------------------------------------------


def _skipped(skipped: SkippedKeys) -> dict[str, Any]:
    """The skipped keys of a listing, as fields of its answer (none when there are none)."""
    if not skipped.count:
        return {}
    return {"skipped": skipped.count, "skipped_keys": skipped.examples}


def _limits(admin: Admin) -> dict[str, int]:
    return {
        "eager_state_size_limit": admin.store.eager_state_size_limit,
        "eager_state_field_limit": admin.store.eager_state_field_limit,
    }


@api
async def services(request: Request) -> Response:
    admin = _admin(request)
    found = await admin.services()
    return JSONResponse(
        {
            "namespace": admin.keyspace.namespace,
            "limits": _limits(admin),
            "services": [
                {
                    "name": s.name,
                    "objects": s.objects,
                    "keys": s.keys,
                    "bytes": s.bytes,
                    "unsized": s.unsized,
                    "lazy": s.lazy,
                    "near": s.near,
                }
                for s in found
            ],
            **_skipped(found.skipped),
        }
    )


@api
async def objects(request: Request) -> Response:
    page = await _admin(request).list_objects(
        _query(request, "service"),
        _query(request, "prefix", ""),
        _int(_query(request, "cursor", "0"), "cursor", 0),
        min(_int(_query(request, "limit", "50"), "limit", 1), 1000),
    )
    return JSONResponse(
        {
            "namespace": _admin(request).keyspace.namespace,
            "objects": [_row(_admin(request), o) for o in page.objects],
            "cursor": str(page.cursor),  # SCAN cursors can pass 2**53
            **_skipped(page.skipped),
        }
    )


def _row(admin: Admin, obj: ObjectInfo) -> dict[str, Any]:
    store = admin.store
    return {
        "key": obj.key,
        "kind": obj.kind,
        "workflow_status": obj.workflow_status,
        "retention_ms": obj.retention_ms,
        "version": obj.version,
        "size": obj.size,
        "keys": obj.keys,
        "changed_ms": obj.changed_ms,
        "load": obj.fit(store.eager_state_size_limit, store.eager_state_field_limit),
    }


def _cell(preview: Preview | None) -> dict[str, Any] | None:
    if preview is None:
        return None
    return {"size": preview.size, "preview": preview.text, "truncated": preview.truncated}


async def _table_rows(
    request: Request, service: str, prefix: str, fresh: bool
) -> tuple[list[ObjectInfo], bool, SkippedKeys]:
    """The objects of one table, from one sweep; kept for ``TABLE_CACHE_SECONDS`` so that
    paging and sorting do not sweep again (``fresh`` sweeps anyway)."""
    cache: OrderedDict[tuple[str, str], tuple[float, Any]] = request.app.state.table_cache
    now = time.monotonic()
    found = cache.get((service, prefix))
    if found is not None and not fresh and now - found[0] < TABLE_CACHE_SECONDS:
        rows: tuple[list[ObjectInfo], bool, SkippedKeys] = found[1]
        return rows
    rows = await _admin(request).object_rows(
        service, prefix, max_objects=request.app.state.max_table_objects
    )
    cache[(service, prefix)] = (now, rows)
    cache.move_to_end((service, prefix))
    while len(cache) > TABLE_CACHE_ENTRIES:
        cache.popitem(last=False)
    return rows


@api
async def table(request: Request) -> Response:
    admin = _admin(request)
    service, prefix = _query(request, "service"), _query(request, "prefix", "")
    sort = _query(request, "sort", "key")
    if sort not in SORTS:
        raise BadRequest(f"query parameter 'sort' must be one of {', '.join(SORTS)}")
    order = _query(request, "order", "asc")
    if order not in ("asc", "desc"):
        raise BadRequest("query parameter 'order' must be 'asc' or 'desc'")
    offset = _int(_query(request, "offset", "0"), "offset", 0)
    limit = min(_int(_query(request, "limit", "50"), "limit", 1), MAX_TABLE_PAGE)
    columns = list(dict.fromkeys(request.query_params.getlist("column")))
    if len(columns) > MAX_TABLE_COLUMNS:
        raise BadRequest(f"at most {MAX_TABLE_COLUMNS} state keys can be shown as columns")
    fresh = _query(request, "fresh", "0") == "1"
    rows, complete, skipped = await _table_rows(request, service, prefix, fresh)
    page = sort_objects(rows, sort, order == "desc")[offset : offset + limit]
    cells = await admin.previews(service, [o.key for o in page], columns)
    return JSONResponse(
        {
            "namespace": admin.keyspace.namespace,
            "service": service,
            "prefix": prefix,
            "sort": sort,
            "order": order,
            "offset": offset,
            "limit": limit,
            "total": len(rows),
            "complete": complete,
            "columns": columns,
            "limits": _limits(admin),
            "objects": [
                {**_row(admin, obj), "values": [_cell(row.get(name)) for name in columns]}
                for obj, row in zip(page, cells, strict=True)
            ],
            **_skipped(skipped),
        }
    )


def _entry(
    name: str, size: int, ttl_ms: int | None, value: Any, limit: int = PREVIEW_LIMIT
) -> dict[str, Any]:
    text = json.dumps(value, ensure_ascii=False)
    if len(text) <= limit:
        return {"name": name, "size": size, "ttl_ms": ttl_ms, "value": value}
    return {
        "name": name,
        "size": size,
        "ttl_ms": ttl_ms,
        "preview": text[:PREVIEW_CHARS],
        "truncated": True,
    }


def _cost(entry: dict[str, Any]) -> int:
    return len(json.dumps(entry, ensure_ascii=False).encode()) + 2


@api
async def state(request: Request) -> Response:
    service, key = _query(request, "service"), _query(request, "key")
    offset = _int(_query(request, "offset", "0"), "offset", 0)
    found = await _admin(request).read(service, key)
    sizes = found.sizes
    budget: int = request.app.state.max_response_bytes
    names = list(found.values)
    used = _STATE_OVERHEAD + len(service.encode()) + len(key.encode())
    entries: list[dict[str, Any]] = []
    next_offset: int | None = None
    # Values up to PREVIEW_LIMIT go whole, larger ones as previews; the page ends before the
    # entry that would take the answer over the budget (but holds at least one entry).
    key_ids = found.key_ids

    def codec_fields(name: str) -> dict[str, Any]:
        if name not in key_ids:
            return {}
        sealed = {"sealed": found.sealed[name]} if name in found.sealed else {}
        return {"encrypted": key_ids[name], **sealed}

    for index in range(offset, len(names)):
        name = names[index]
        ttl_ms = found.expiries.get(name)
        entry = _entry(name, sizes[name], ttl_ms, found.values[name], min(PREVIEW_LIMIT, budget))
        entry.update(codec_fields(name))
        cost = _cost(entry)
        if used + cost > budget:
            if entries:
                next_offset = index
                break
            if "value" in entry:  # alone over the budget: its preview, then
                entry = _entry(name, sizes[name], ttl_ms, found.values[name], 0)
                entry.update(codec_fields(name))
                cost = _cost(entry)
        entries.append(entry)
        used += cost
    return JSONResponse(
        {
            "namespace": _admin(request).keyspace.namespace,
            "service": found.service,
            "key": found.key,
            "exists": found.exists,
            "version": found.version,
            "kind": found.kind,
            "workflow_status": found.workflow_status,
            "retention_ms": found.retention_ms,
            "keys": entries,
            "expiring": bool(found.expiries),
            "total_keys": len(names),
            "offset": offset,
            "next_offset": next_offset,
        }
    )


@api
async def value(request: Request) -> Response:
    name = _query(request, "name")
    data = await _admin(request).read_value(
        _query(request, "service"), _query(request, "key"), name
    )
    return Response(
        json.dumps(data, ensure_ascii=False, indent=2),
        media_type="application/json",
        headers={
            "content-disposition": f'attachment; filename="value.json"; '
            f"filename*=UTF-8''{quote(name + '.json', safe='')}"
        },
    )


# -- changes --------------------------------------------------------------------------------------


Change = Callable[[Admin, dict[str, Any]], Awaitable[int]]


def change(*fields: str) -> Callable[[Change], Handler]:
    """An API handler of a change: ``apply(admin, body)`` gets the request's JSON body, its
    ``service``, ``key``, ``version`` and ``fields`` checked, and returns the new version,
    which the answer holds."""

    def handler(apply: Change) -> Handler:
        @api
        @functools.wraps(apply)
        async def wrapped(request: Request) -> Response:
            body = await _body(request, *fields, "version")
            return JSONResponse({"version": await apply(_admin(request), body)})

        return wrapped

    return handler


@change("name", "value")
async def set_value(admin: Admin, body: dict[str, Any]) -> int:
    return await admin.set(
        body["service"], body["key"], body["name"], body["value"], expected_version=body["version"]
    )


@change("name")
async def clear_value(admin: Admin, body: dict[str, Any]) -> int:
    return await admin.clear(
        body["service"], body["key"], body["name"], expected_version=body["version"]
    )


@change("state")
async def replace_state(admin: Admin, body: dict[str, Any]) -> int:
    if not isinstance(body["state"], dict):
        raise BadRequest("field 'state' must be a JSON object {state key: value}")
    return await admin.replace(
        body["service"], body["key"], body["state"], expected_version=body["version"]
    )


@change("confirm")
async def clear_state(admin: Admin, body: dict[str, Any]) -> int:
    if body["confirm"] != CONFIRM_CLEAR_ALL:
        raise BadRequest(f'clearing all state needs "confirm": "{CONFIRM_CLEAR_ALL}"')
    return await admin.clear_all(body["service"], body["key"], expected_version=body["version"])


# -- history ------------------------------------------------------------------------------------


def _side(admin: Admin, entry: HistoryEntry, name: str, raw: Any) -> dict[str, Any]:
    """One side (old or new) of a change, as the history's ENTRY holds it."""
    if raw is ABSENT:
        return {"absent": True}
    if raw is NOT_KEPT:
        return {"not_kept": True}
    shown = admin.stored_view(entry.service, entry.key, name, raw)
    text = json.dumps(shown, ensure_ascii=False)
    if len(text) <= PREVIEW_LIMIT:
        return {"value": shown}
    return {"preview": text[:PREVIEW_CHARS], "truncated": True}


def _history_entry(admin: Admin, entry: HistoryEntry, restorable: bool) -> dict[str, Any]:
    return {
        **admin.entry_head(entry),
        "restorable": restorable,
        "changes": [
            {
                "name": name,
                "old": _side(admin, entry, name, change.old_bytes),
                "new": _side(admin, entry, name, change.new_bytes),
            }
            for name, change in entry.changes.items()
        ],
    }


@api
async def history(request: Request) -> Response:
    admin = _admin(request)
    service, key = _query(request, "service"), _query(request, "key")
    limit = min(
        _int(_query(request, "limit", str(DEFAULT_HISTORY_LIMIT)), "limit", 1), MAX_HISTORY_LIMIT
    )
    # the bookkeeping first: a commit in between then makes the newest entry newer than the
    # version read, which reach() takes as a break (nothing restorable until the next read)
    meta = await admin.bookkeeping(service, key)
    entries = await admin.store.history(service, key, limit=limit)
    entries.reverse()
    run, earliest = reach(entries, meta.version, meta.commit)
    restorable_from = earliest if run else None
    return JSONResponse(
        {
            "namespace": admin.keyspace.namespace,
            "service": service,
            "key": key,
            "version": meta.version,
            "kept": bool(entries),
            "restorable_from": restorable_from,
            "entries": [
                _history_entry(
                    admin,
                    e,
                    restorable_from is not None and restorable_from <= e.version < meta.version,
                )
                for e in entries
            ],
        }
    )


@change("to_version", "confirm")
async def restore(admin: Admin, body: dict[str, Any]) -> int:
    if body["confirm"] != CONFIRM_RESTORE:
        raise BadRequest(f'a restore needs "confirm": "{CONFIRM_RESTORE}"')
    target = body["to_version"]
    if not isinstance(target, int) or isinstance(target, bool) or target < 0:
        raise BadRequest("field 'to_version' must be a version: an integer, 0 or more")
    return await admin.store.restore(
        body["service"], body["key"], version=target, expected_version=body["version"]
    )


def _event(name: str, data: dict[str, Any], event_id: int | None = None) -> str:
    # json.dumps writes no line break (those in strings are escaped): one data line
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


@api
async def watch(request: Request) -> Response:
    admin = _admin(request)
    service, key = _query(request, "service"), _query(request, "key")
    check_key(check_service(service), key)
    # an EventSource that reconnects sends the id of the last event it got: resume after it
    resume = request.headers.get("last-event-id") or request.query_params.get("since")
    since = None if resume in (None, "") else _int(resume, "since", 0)
    streams: set[object] = request.app.state.watches
    if len(streams) >= MAX_WATCHES:
        return _error(503, "busy", f"too many open event streams (at most {MAX_WATCHES})")
    url: str = request.app.state.url or ""

    async def events() -> AsyncIterator[str]:
        token = object()
        streams.add(token)
        entries = admin.store.watch(service, key, since_version=since)
        pending: asyncio.Future[HistoryEntry] | None = None
        try:
            yield "retry: 2000\n\n"
            while True:
                if pending is None:
                    pending = asyncio.ensure_future(anext(entries))
                done, _ = await asyncio.wait({pending}, timeout=HEARTBEAT_SECONDS)
                if not done:
                    yield ": idle\n\n"  # a write also finds a client that went away
                    continue
                entry, pending = pending.result(), None
                yield _event("entry", _history_entry(admin, entry, False), entry.version)
        except Exception as exc:
            _, code, message = _failure(exc)
            yield _event(
                "failure", {"error": scrub(message, url) if url else message, "code": code}
            )
        finally:
            # the client went away (the response is cancelled) or the watch failed: stop the
            # read in flight and close the watch, so no task or blocked connection outlives it
            streams.discard(token)
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending
            close = getattr(entries, "aclose", None)  # an async generator, typed as an iterator
            if close is not None:
                await close()

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"x-accel-buffering": "no"},  # a proxy in front must not hold events back
    )


async def index(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", media_type="text/html")


# -- the app --------------------------------------------------------------------------------------


def create_app(
    open_store: Callable[[], RedisStateStore],
    *,
    token: str | None = None,
    loopback_only: bool = True,
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    url: str | None = None,
    max_table_objects: int = DEFAULT_MAX_TABLE_OBJECTS,
) -> Guard:
    """The UI as an ASGI app; ``open_store`` is called once at startup (and closed at exit).

    ``token``: required by every API request when set (printable ASCII, else ValueError).
    ``loopback_only``: accept only requests whose Host header is a loopback name (set it
    when listening on loopback). ``max_response_bytes``: the most one object page's answer
    holds (see the module docstring). ``url``: the Redis URL, whose secrets error messages
    never show. ``max_table_objects``: the most objects one table of a service sorts (its
    sweep stops there and the answer says ``"complete": false``).
    """
    if not isinstance(max_response_bytes, int) or max_response_bytes <= 0:
        raise ValueError(f"max_response_bytes must be a positive int, got {max_response_bytes!r}")
    if not isinstance(max_table_objects, int) or max_table_objects <= 0:
        raise ValueError(f"max_table_objects must be a positive int, got {max_table_objects!r}")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        store = open_store()
        app.state.admin = Admin(store, origin="ui")
        try:
            yield
        finally:
            await store.aclose()

    routes = [
        Route("/", index, methods=["GET"]),
        Route("/api/services", services, methods=["GET"]),
        Route("/api/objects", objects, methods=["GET"]),
        Route("/api/table", table, methods=["GET"]),
        Route("/api/state", state, methods=["GET"]),
        Route("/api/state", replace_state, methods=["PUT"]),
        Route("/api/state", clear_state, methods=["DELETE"]),
        Route("/api/value", value, methods=["GET"]),
        Route("/api/value", set_value, methods=["PUT"]),
        Route("/api/value", clear_value, methods=["DELETE"]),
        Route("/api/history", history, methods=["GET"]),
        Route("/api/restore", restore, methods=["POST"]),
        Route("/api/watch", watch, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.max_response_bytes = max_response_bytes
    app.state.max_table_objects = max_table_objects
    app.state.table_cache = OrderedDict()
    app.state.url = url
    app.state.watches = set()
    return Guard(app, token=token, loopback_only=loopback_only)
