"""Moving state between Restate's own K/V state and restate-redis, through Restate's admin API.

Reading (``restate-redis import --from-restate ADMIN_URL``): the admin API's SQL endpoint,
``POST {admin}/query`` with ``{"query": "SELECT ..."}`` and ``Accept: application/json``,
answers ``{"rows": [{column: value, ...}, ...]}``; its ``state`` table has one row per state
key of every Virtual Object and Workflow (``service_name``, ``service_key``, ``key``, and
``value`` as hex of the stored bytes), ``sys_service`` says which services are workflows, and
``sys_invocation`` whether a workflow's run completed (``status``, ``completed_at``,
``completion_retention``). The state is read one service at a time, in pages ordered by
object key, so it is a consistent copy of an object only while no invocation changes it:
drain or pause the services first.

Writing (``restate-redis export --to-restate ADMIN_URL``): the endpoint ``restate kv edit``
uses, ``POST {admin}/services/{service}/state`` with ``{"object_key": KEY, "new_state":
{NAME: [byte, ...]}}``, which replaces the object's whole state (Restate answers 202 and
applies it through its log); afterwards the state table is read back until it shows what was
written.

Values: the SDK's default serde writes JSON, the store's is msgpack (or what ``--serde``
says). Each value is decoded and re-encoded on the way (:func:`from_restate_value`,
:func:`to_restate_value`); ``--keep-bytes`` moves the bytes as they are instead (for
handlers whose serde is the same on both sides).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from ..codecs import CodecChain
from ..errors import StateDecodeError, StateEncodeError, StateError, StoreUnavailableError, where
from ..records import ObjectRecord
from ..serde import Serde

PAGE_ROWS = 10_000
"""Rows of the state table per query."""
TIMEOUT = 60.0
"""Seconds one admin API call may take."""


class RestateAdminError(StateError):
    """Restate's admin API refused a call, or could not be reached."""


def sql_text(value: str) -> str:
    """``value`` as an SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


_DURATION = re.compile(r"^PT(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?$")


def iso_duration_ms(text: str | None) -> int | None:
    """``PT86400S`` (what ``sys_invocation`` shows) in ms; None when it does not parse."""
    match = _DURATION.match(text or "")
    if not match or not any(match.groups()):
        return None
    hours, minutes, secs = (float(g or 0) for g in match.groups())
    return int((hours * 3600 + minutes * 60 + secs) * 1000)


def utc_ms(text: str | None) -> int | None:
    """``2026-12-01T01:26:56.216Z`` in ms since the epoch; None when it does not parse."""
    if not text:
        return None
    try:
        return int(dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class RestateAdmin:
    """Calls to Restate's admin API at ``url`` (``http://host:9070``)."""

    url: str
    timeout: float = TIMEOUT

    def _call(self, method: str, path: str, body: Any | None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url.rstrip("/") + path,
            data=data,
            method=method,
            headers={"content-type": "application/json", "accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as reply:
                text = reply.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace").strip()
            with contextlib.suppress(ValueError, AttributeError):
                detail = json.loads(detail).get("message", detail)
            raise RestateAdminError(
                f"Restate's admin API at {self.url} refused {method} {path}: {exc.code} {detail}"
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise StoreUnavailableError(
                f"Restate's admin API at {self.url} could not be reached: {reason}"
            ) from None
        return json.loads(text) if text.strip() else None

    async def call(self, method: str, path: str, body: Any | None = None) -> Any:
        return await asyncio.to_thread(self._call, method, path, body)

    async def query(self, sql: str) -> list[dict[str, Any]]:
        """The rows of one SQL query (``POST /query``)."""
        reply = await self.call("POST", "/query", {"query": sql})
        rows = reply.get("rows") if isinstance(reply, dict) else None
        if not isinstance(rows, list):
            raise RestateAdminError(f"Restate's admin API at {self.url}: /query sent no rows")
        return rows

    async def keyed_services(self) -> dict[str, str]:
        """Service name -> ``virtual_object`` or ``workflow``: those with K/V state."""
        rows = await self.query("SELECT name, ty FROM sys_service")
        return {
            str(r["name"]): str(r["ty"])
            for r in rows
            if r.get("ty") in ("virtual_object", "workflow")
        }

    async def state_pages(self, service: str) -> AsyncIterator[list[tuple[str, str, bytes]]]:
        """(object key, state key, value bytes) of ``service``'s state, in pages by object key.
        An object is never split between two pages (a page ends at an object's end)."""
        offset = 0
        carry: list[tuple[str, str, bytes]] = []
        while True:
            rows = await self.query(
                "SELECT service_key, key, value FROM state WHERE service_name = "
                f"{sql_text(service)} ORDER BY service_key, key "
                f"LIMIT {PAGE_ROWS} OFFSET {offset}"
            )
            offset += len(rows)
            page = carry + [
                (str(r["service_key"]), str(r["key"]), bytes.fromhex(str(r["value"] or "")))
                for r in rows
            ]
            if len(rows) < PAGE_ROWS:
                if page:
                    yield page
                return
            last = page[-1][0]
            carry = [row for row in page if row[0] == last]
            done = [row for row in page if row[0] != last]
            if done:
                yield done

    async def main_handler(self, service: str) -> str | None:
        """The name of a workflow's run handler (``GET /services/{service}``)."""
        reply = await self.call("GET", f"/services/{urllib.parse.quote(service, safe='')}")
        for handler in (reply or {}).get("handlers") or []:
            if str(handler.get("ty", "")).lower() == "workflow":
                return str(handler.get("name"))
        return None

    async def workflow_runs(self, service: str, handler: str) -> dict[str, tuple[str, int | None]]:
        """Workflow id -> (status "running" / "completed", ms its retention has left or None),
        from the invocations of its run handler."""
        rows = await self.query(
            "SELECT target_service_key, status, completed_at, completion_retention "
            f"FROM sys_invocation WHERE target_service_name = {sql_text(service)} "
            f"AND target_handler_name = {sql_text(handler)}"
        )
        now = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
        runs: dict[str, tuple[str, int | None]] = {}
        for row in rows:
            key = str(row["target_service_key"])
            if row.get("status") != "completed":
                runs[key] = ("running", None)
                continue
            done, keep = (
                utc_ms(row.get("completed_at")),
                iso_duration_ms(row.get("completion_retention")),
            )
            left = None if done is None or keep is None else done + keep - now
            runs[key] = ("completed", left if left is None or left > 0 else 1)
        return runs

    async def set_state(self, service: str, key: str, state: Mapping[str, bytes]) -> None:
        """Replace the whole state of ``service``/``key`` (``POST /services/{service}/state``,
        the call ``restate kv edit`` makes)."""
        body = {"object_key": key, "new_state": {n: list(v) for n, v in state.items()}}
        await self.call("POST", f"/services/{urllib.parse.quote(service, safe='')}/state", body)


# -- values -------------------------------------------------------------------------------------


def from_restate_value(
    raw: bytes, serde: Serde[Any], codec: CodecChain, service: str, key: str, name: str
) -> bytes:
    """What the store keeps for a value the SDK's JSON serde wrote in Restate."""
    try:
        value = json.loads(raw)
    except ValueError:
        raise StateDecodeError(
            f"{where(service, key, name)} in Restate is not JSON (the SDK's default serde); "
            f"move it with --keep-bytes"
        ) from None
    try:
        data = serde.serialize(value)
    except Exception as exc:
        raise StateEncodeError(
            f"{where(service, key, name)}: {type(serde).__name__} cannot encode its value: {exc}"
        ) from exc
    return codec.encode(bytes(data), service, key, name)


def to_restate_value(
    stored: bytes, serde: Serde[Any], codec: CodecChain, service: str, key: str, name: str
) -> bytes:
    """The JSON the SDK's default serde reads for a value the store keeps."""
    value = serde.deserialize(codec.decode(stored, service, key, name))
    try:
        return json.dumps(value, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise StateEncodeError(
            f"{where(service, key, name)} holds what JSON cannot carry ({exc}); move it "
            f"with --keep-bytes"
        ) from None


async def restate_records(
    admin: RestateAdmin,
    services: list[str] | None,
    serde: Serde[Any],
    codec: CodecChain,
    *,
    keep_bytes: bool,
    retention_ms: int | None,
) -> AsyncIterator[ObjectRecord]:
    """Restate's state of ``services`` (every Virtual Object and Workflow when None) as
    records: version 1, the values transcoded (or kept), workflows with the status of their
    run (a completed one keeps Restate's remaining retention, else ``retention_ms``)."""
    kinds = await admin.keyed_services()
    if services is None:
        names = sorted(kinds)
    else:
        missing = [name for name in services if name not in kinds]
        if missing:
            known = ", ".join(sorted(kinds)) or "none"
            raise RestateAdminError(
                f"Restate at {admin.url} has no Virtual Object or Workflow named "
                f"{', '.join(repr(m) for m in missing)} (it has: {known})"
            )
        names = list(services)
    for service in names:
        runs: dict[str, tuple[str, int | None]] = {}
        if kinds[service] == "workflow":
            handler = await admin.main_handler(service)
            if handler is not None:
                runs = await admin.workflow_runs(service, handler)
        async for page in admin.state_pages(service):
            objects: dict[str, dict[str, bytes]] = {}
            for key, name, raw in page:
                value = (
                    raw if keep_bytes else from_restate_value(raw, serde, codec, service, key, name)
                )
                objects.setdefault(key, {})[name] = value
            for key, state in objects.items():
                status, left = runs.get(key, (None, None))
                ttl = None
                if status == "completed":
                    ttl = left if left is not None else retention_ms
                yield ObjectRecord(service, key, state, 1, status, ttl)
