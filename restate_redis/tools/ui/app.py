"""The web UI's ASGI app: a static page and the JSON API it uses.

The API (every answer is JSON; errors are ``{"error": message, "code": code}``)::

    GET    /api/services                            {"namespace", "services": [{"name", "objects"}],
                                                     "skipped", "skipped_keys"}
    GET    /api/objects?service=S&prefix=P&cursor=C&limit=N
                                                    {"namespace", "objects": [{"key", "kind",
                                                      "workflow_status", "retention_ms"}],
                                                     "cursor": "0" when complete,
                                                     "skipped", "skipped_keys"}
    GET    /api/state?service=S&key=K&offset=N      {"namespace", "service", "key", "exists",
                                                     "version",
                                                     "kind", "workflow_status", "retention_ms",
                                                     "keys": [{"name", "size", "ttl_ms",
                                                       "value" | "preview" + "truncated": true}],
                                                     "expiring", "total_keys", "offset",
                                                     "next_offset"}
    GET    /api/value?service=S&key=K&name=N        one value as a JSON file (attachment)
    PUT    /api/value   {"service", "key", "name", "value", "version"}   set one state key
    DELETE /api/value   {"service", "key", "name", "version"}            clear one state key
    PUT    /api/state   {"service", "key", "state", "version"}           replace the state
    DELETE /api/state   {"service", "key", "version", "confirm": "delete"}  clear all

Changes answer ``{"version": new version}``. ``"version"`` is required in every change: the
version the caller read, or ``null`` to skip the check; a mismatch answers 409 with code
``version_conflict`` and writes nothing. Values are JSON as in :mod:`restate_redis.tools.admin`
(``{"$base64": ...}`` bytes, ``{"$raw": ...}`` undecodable); a body holding NaN, Infinity or
a number too large for a float (``1e999``) is refused. A value whose JSON text is over
64 KiB comes as a 2 000-character ``preview``; ``/api/value`` downloads all of it. One
``/api/state`` answer stays under ``max_response_bytes`` (default 4 MiB): when the keys do
not all fit, it holds the first ones from ``offset`` and ``next_offset`` continues (null on
the last page). ``ttl_ms`` is the time a state key has left when it has an expiry of its
own (``set(..., ttl=...)``), else null; ``expiring`` is true when any key of the object has
one. Listings leave out keys restate-redis did not write: ``"skipped"`` counts
them and ``"skipped_keys"`` names a few (both absent when none was skipped).
Security (token, cross-site and DNS-rebinding checks) is in :mod:`restate_redis.tools.ui.security`.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ...backend.connection import scrub
from ...backend.retry import as_state_error
from ...errors import (
    InvalidNameError,
    InvalidPatchError,
    LeaseTimeoutError,
    StateEncodeError,
    StateError,
    StoreUnavailableError,
    UnknownObjectError,
    ValueTooLargeError,
    VersionConflictError,
)
from ...store import RedisStateStore
from ..admin import Admin, SkippedKeys, load_json
from .security import Guard

STATIC = Path(__file__).parent / "static"
PREVIEW_LIMIT = 64 * 1024  # characters of JSON text sent whole
PREVIEW_CHARS = 2000  # characters of a longer value's preview
CONFIRM_CLEAR_ALL = "delete"
DEFAULT_MAX_RESPONSE_BYTES = 4 * 1024 * 1024
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
    if isinstance(translated, UnknownObjectError):
        return 404, "not_found", str(translated)
    if isinstance(translated, LeaseTimeoutError):
        return 503, "busy", str(translated)
    if isinstance(
        translated, InvalidPatchError | InvalidNameError | StateEncodeError | ValueTooLargeError
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


@api
async def services(request: Request) -> Response:
    admin = _admin(request)
    found = await admin.services()
    return JSONResponse(
        {
            "namespace": admin.keyspace.namespace,
            "services": [{"name": s.name, "objects": s.objects} for s in found],
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
            "objects": [
                {
                    "key": o.key,
                    "kind": o.kind,
                    "workflow_status": o.workflow_status,
                    "retention_ms": o.retention_ms,
                }
                for o in page.objects
            ],
            "cursor": str(page.cursor),  # SCAN cursors can pass 2**53
            **_skipped(page.skipped),
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
    for index in range(offset, len(names)):
        name = names[index]
        ttl_ms = found.expiries.get(name)
        entry = _entry(name, sizes[name], ttl_ms, found.values[name], min(PREVIEW_LIMIT, budget))
        cost = _cost(entry)
        if used + cost > budget:
            if entries:
                next_offset = index
                break
            if "value" in entry:  # alone over the budget: its preview, then
                entry = _entry(name, sizes[name], ttl_ms, found.values[name], 0)
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


@api
async def set_value(request: Request) -> Response:
    body = await _body(request, "name", "value", "version")
    version = await _admin(request).set(
        body["service"], body["key"], body["name"], body["value"], expected_version=body["version"]
    )
    return JSONResponse({"version": version})


@api
async def clear_value(request: Request) -> Response:
    body = await _body(request, "name", "version")
    version = await _admin(request).clear(
        body["service"], body["key"], body["name"], expected_version=body["version"]
    )
    return JSONResponse({"version": version})


@api
async def replace_state(request: Request) -> Response:
    body = await _body(request, "state", "version")
    if not isinstance(body["state"], dict):
        raise BadRequest("field 'state' must be a JSON object {state key: value}")
    version = await _admin(request).replace(
        body["service"], body["key"], body["state"], expected_version=body["version"]
    )
    return JSONResponse({"version": version})


@api
async def clear_state(request: Request) -> Response:
    body = await _body(request, "version", "confirm")
    if body["confirm"] != CONFIRM_CLEAR_ALL:
        raise BadRequest(f'clearing all state needs "confirm": "{CONFIRM_CLEAR_ALL}"')
    version = await _admin(request).clear_all(
        body["service"], body["key"], expected_version=body["version"]
    )
    return JSONResponse({"version": version})


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
) -> Guard:
    """The UI as an ASGI app; ``open_store`` is called once at startup (and closed at exit).

    ``token``: required by every API request when set (printable ASCII, else ValueError).
    ``loopback_only``: accept only requests whose Host header is a loopback name (set it
    when listening on loopback). ``max_response_bytes``: the most one object page's answer
    holds (see the module docstring). ``url``: the Redis URL, whose secrets error messages
    never show.
    """
    if not isinstance(max_response_bytes, int) or max_response_bytes <= 0:
        raise ValueError(f"max_response_bytes must be a positive int, got {max_response_bytes!r}")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        store = open_store()
        app.state.admin = Admin(store)
        try:
            yield
        finally:
            await store.aclose()

    routes = [
        Route("/", index, methods=["GET"]),
        Route("/api/services", services, methods=["GET"]),
        Route("/api/objects", objects, methods=["GET"]),
        Route("/api/state", state, methods=["GET"]),
        Route("/api/state", replace_state, methods=["PUT"]),
        Route("/api/state", clear_state, methods=["DELETE"]),
        Route("/api/value", value, methods=["GET"]),
        Route("/api/value", set_value, methods=["PUT"]),
        Route("/api/value", clear_value, methods=["DELETE"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.max_response_bytes = max_response_bytes
    app.state.url = url
    return Guard(app, token=token, loopback_only=loopback_only)
