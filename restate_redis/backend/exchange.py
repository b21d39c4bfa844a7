"""Whole objects in and out of Redis: the round trips of an export (``dump.lua``) and of an
import (``load.lua``), and the sweep that finds every object of a namespace on every master.

Which key and meta field holds what stays in the two scripts (and :mod:`restate_redis.keyspace`);
this module only passes an object's keys and a record's fields, and decodes the replies.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..keyspace import EMPTY_GRACE_SECONDS, STATE, Keyspace, ObjectKeys
from ..records import HistoryRow, ObjectRecord, OnConflict
from . import replies
from .engine import RedisBackend, commit_keys
from .inventory import BATCH, SCAN_COUNT, SkippedKeys, parse, scan_page
from .replies import Refusal, Status

__all__ = ["Dumped", "Loaded", "dump", "find_objects", "load"]

PAGE = 1000
"""State keys per page when a large object is read under its lease."""


def _int(raw: Any) -> int:
    return int(raw.decode() if isinstance(raw, bytes) else raw)


def _name(raw: bytes | str) -> str:
    """A state key as stored: its name verbatim (UTF-8), which is what sessions write."""
    return raw.decode("utf-8") if isinstance(raw, bytes) else raw


@dataclass(slots=True)
class Dumped:
    """dump.lua's reply for an object that exists (or one page of it)."""

    version: int
    workflow_status: str | None
    ttl_ms: int | None
    changed_ms: int | None
    state: dict[str, bytes] = field(default_factory=dict)
    key_ttl_ms: dict[str, int] = field(default_factory=dict)
    cursor: str = ""
    """The cursor that continues a paged read ("0": done; "" for a whole read)."""

    def record(self, service: str, key: str) -> ObjectRecord:
        return ObjectRecord(
            service,
            key,
            self.state,
            self.version,
            self.workflow_status,
            self.ttl_ms,
            self.key_ttl_ms,
            self.changed_ms,
        )


@dataclass(frozen=True, slots=True)
class TooLarge:
    """dump.lua would not read the state whole: it has ``keys`` state keys."""

    keys: int


def _parse_dump(reply: Any) -> Dumped | TooLarge | Refusal | None:
    code = int(reply[0])
    if code == 0:
        return None
    if code == 3:
        return TooLarge(int(reply[1]))
    if code < 0:
        return replies.refusal(reply)
    at = 1
    cursor = ""
    if code == 2:
        cursor, at = replies.text(reply[1]), 2
    version, wf, pttl, changed = reply[at : at + 4]
    n = int(reply[at + 4])
    first = at + 5
    state = {_name(reply[i]): bytes(reply[i + 1]) for i in range(first, first + 2 * n, 2)}
    t_at = first + 2 * n
    t = int(reply[t_at])
    key_ttls = {_name(reply[i]): int(reply[i + 1]) for i in range(t_at + 1, t_at + 1 + 2 * t, 2)}
    changed_text = replies.text(changed)
    return Dumped(
        _int(version),
        replies.text(wf) or None,
        int(pttl) if int(pttl) > 0 else None,
        int(changed_text) if changed_text else None,
        state,
        key_ttls,
        cursor,
    )


async def dump(
    backend: RedisBackend, keys: ObjectKeys, *, cursor: str = "", page: int = PAGE
) -> Dumped | TooLarge | Refusal | None:
    """dump.lua: the object whole, at one instant (``cursor`` "": whole, while within the
    store's field limit), or one page of it from ``cursor`` (the caller holds its lease); None
    when there is nothing to export."""
    redis_keys = [keys.state, keys.ttls, keys.v1_meta, keys.v1_prev]
    args: list[Any] = [backend.eager_state_field_limit, cursor, page]
    script, wire = backend.scripts.dump, backend.wire
    reply = await backend.retry.run(
        "export", keys.state, lambda: wire.script(script, redis_keys, args)
    )
    return _parse_dump(reply)


@dataclass(frozen=True, slots=True)
class Loaded:
    """load.lua's reply for an import that was decided: what it did (or would do)."""

    outcome: str
    """"created", "overwritten", "unchanged", "skipped" or "conflict"."""
    version: int


async def history_rows(client: Any, keys: ObjectKeys, version: int) -> tuple[HistoryRow, ...]:
    """The object's history entries as stored, oldest first, up to ``version`` (an entry
    committed after the state was read is not of that state)."""
    rows = await client.xrange(keys.history)
    out: list[HistoryRow] = []
    for entry_id, fields in rows:
        decoded = {replies.text(f): bytes(v) for f, v in fields.items()}
        if int(decoded.get("v", b"0") or 0) > version:
            break
        out.append((replies.text(entry_id), decoded))
    return tuple(out)


async def load(
    backend: RedisBackend,
    keys: ObjectKeys,
    record: ObjectRecord,
    *,
    commit_id: str,
    on_conflict: OnConflict,
    dry_run: bool,
    token: str = "",
    history: str = "",
) -> Loaded | Refusal:
    """load.lua: ``record`` written whole as the object at ``keys``, under its lease (taken
    for the script's length when ``token`` is "", else held by the caller with it). Safe to
    send again: an object that already holds the record is left unchanged."""
    args: list[Any] = [
        token,
        on_conflict,
        "1" if dry_run else "0",
        commit_id,
        record.version,
        record.workflow_status or "",
        record.ttl_ms if record.ttl_ms else -1,
        "" if record.changed_ms is None else record.changed_ms,
        EMPTY_GRACE_SECONDS * 1000,
        history,
        len(record.state),
    ]
    for name, value in record.state.items():
        args += (name, value)
    args.append(len(record.key_ttl_ms))
    for name, ms in record.key_ttl_ms.items():
        args += (name, ms)
    args.append(len(record.history))
    for entry_id, fields in record.history:
        args += (entry_id, len(fields))
        for name, value in fields.items():
            args += (name, value)
    redis_keys = commit_keys(keys, bool(history) or bool(record.history))
    script, wire = backend.scripts.load, backend.wire
    reply = await backend.retry.run(
        "import", keys.state, lambda: wire.script(script, redis_keys, args)
    )
    code = int(reply[0])
    if code == Status.OK:
        return Loaded(replies.text(reply[1]), int(reply[2]))
    if code == Status.LEASE_LOST:
        return Refusal(Status.LEASE_LOST)
    refused = replies.refusal(reply)
    assert refused is not None  # every other code is a refusal
    return refused


async def find_objects(
    client: Any,
    keyspace: Keyspace,
    services: Iterable[str] | None,
    skipped: SkippedKeys,
    *,
    batch: int = BATCH,
    count: int = SCAN_COUNT,
) -> AsyncIterator[list[tuple[str, str]]]:
    """Every object of the namespace (of ``services``, when given) in batches of about
    ``batch`` (service, key) pairs, each once: SCAN of the objects' bookkeeping on every
    master in turn (:func:`restate_redis.backend.inventory.scan_page`). Keys whose name
    restate-redis could not have written go to ``skipped``."""
    wanted = None if services is None else sorted(set(services))
    if wanted is not None and len(wanted) == 1:
        match = keyspace.object_pattern(wanted[0], suffix=STATE)
    else:
        match = keyspace.all_pattern(STATE)
    seen: set[tuple[str, str]] = set()  # SCAN may return a key twice
    pending: list[tuple[str, str]] = []
    cursor = 0
    while True:
        cursor, found = await scan_page(client, cursor, match, count)
        for redis_key in found:
            parsed = parse(keyspace, redis_key, skipped)
            if parsed is None or parsed in seen:
                continue
            if wanted is not None and parsed[0] not in wanted:
                continue
            seen.add(parsed)
            pending.append(parsed)
        if len(pending) >= batch or (cursor == 0 and pending):
            yield pending
            pending = []
        if cursor == 0:
            return
