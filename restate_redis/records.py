"""Objects as whole records, for export and import: what :meth:`RedisStateStore.export_objects`
yields and :meth:`RedisStateStore.import_objects` applies, and their JSON Lines form.

An :class:`ObjectRecord` holds everything that makes one object or workflow what it is, and
nothing of its passing bookkeeping: the state exactly as stored (state key -> the bytes Redis
holds: the serde's and the codecs' output, never decoded), the version, the workflow status,
the time left until the object's keys expire, the time left of each state key with an expiry
of its own, and the time of the last change. The replay records of the last commit (which
recognise a retried invocation) are not part of it: an imported object starts a new commit
history at the record's version.

The file format (``restate-redis export -o FILE``), one JSON document per line, UTF-8 (every
line is plain ASCII: other characters are ``\\u`` escapes)::

    {"format": "restate-redis-export", "version": 1, "namespace": "restate",
     "exported_at_ms": 1767225600000}
    {"service": "Cart", "key": "alice", "version": 3, "workflow": null, "ttl_ms": null,
     "changed_ms": 1767225599000, "state": {"items": "kqVhcHBsZaViYW5hbmE="}, "key_ttl_ms": {}}

(each document on one line). ``state`` maps each state key to the standard base64 of its stored
bytes, so any bytes round-trip; ``key_ttl_ms`` maps the state keys that expire on their own to
the milliseconds they had left when exported. ``ttl_ms`` and the values of ``key_ttl_ms`` are
relative: an import gives the object (or key) that much time from the import on.
:func:`header_line`, :func:`record_line` and :func:`read_lines` write and read it; a line that
is not what it should be raises :class:`RecordFormatError` with its line number.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import UsageError

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "ImportOutcome",
    "ImportReport",
    "Imported",
    "ObjectRecord",
    "OnConflict",
    "RecordFormatError",
    "header_line",
    "read_lines",
    "record_from_json",
    "record_line",
    "record_to_json",
]

FORMAT = "restate-redis-export"
"""The ``format`` of the header line."""
FORMAT_VERSION = 1
"""The ``version`` of the header line this library writes, and the newest it reads."""

OnConflict = Literal["skip", "overwrite", "fail"]
"""What an import does with an object the target already holds in another form: leave it,
replace it, or stop with :class:`~restate_redis.errors.ImportConflictError`."""
ON_CONFLICT: tuple[OnConflict, ...] = ("skip", "overwrite", "fail")

ImportOutcome = Literal["created", "overwritten", "unchanged", "skipped", "conflict"]
"""What an import did to one object (or would do, in a dry run): ``created`` (the target had no
such object), ``overwritten`` (it had another one; ``on_conflict="overwrite"``),
``unchanged`` (it already held the same version, workflow status and state bytes: nothing
was written), ``skipped`` (it had another one; ``on_conflict="skip"``); and in a dry run
only, ``conflict`` (it has another one; ``on_conflict="fail"``: the import would stop there)."""
OUTCOMES: tuple[ImportOutcome, ...] = ("created", "overwritten", "unchanged", "skipped", "conflict")

WORKFLOW_STATUSES = ("running", "completed")


class RecordFormatError(UsageError, ValueError):
    """A record, or a line of an export file, that is not what the format says; ``line`` is
    its 1-based line number in the file (0 when it did not come from a file)."""

    def __init__(self, message: str, line: int = 0) -> None:
        super().__init__(f"line {line}: {message}" if line else message)
        self.line = line


@dataclass(frozen=True, slots=True)
class ObjectRecord:
    """One object or workflow, whole: what an export yields and an import applies."""

    service: str
    key: str
    """The object key, or the workflow id."""
    state: Mapping[str, bytes]
    """State key -> the bytes stored (serde and codecs applied: compressed or encrypted
    values stay so)."""
    version: int = 0
    """Commits so far."""
    workflow_status: str | None = None
    """None for a Virtual Object; ``"running"`` or ``"completed"`` for a workflow."""
    ttl_ms: int | None = None
    """Milliseconds until the object's keys expire (a ``ttl``, a completed workflow's
    retention); None when they are kept indefinitely."""
    key_ttl_ms: Mapping[str, int] = field(default_factory=dict)
    """State key -> milliseconds until it expires, for the keys with an expiry of their own."""
    changed_ms: int | None = None
    """When the state last changed (ms since the Unix epoch, the server's clock); None when
    unknown. An import keeps it."""
    history: tuple[HistoryRow, ...] = ()
    """The object's history entries as stored (stream id, field -> bytes), oldest first:
    exported with ``history=True``; an import that carries them replaces the object's history
    with them, ids and all (and adds no entry of its own)."""

    @property
    def kind(self) -> str:
        return "object" if self.workflow_status is None else "workflow"


HistoryRow = tuple[str, Mapping[str, bytes]]
"""One history entry as stored: its stream id ("<ms>-<seq>") and its fields."""

_STREAM_ID = re.compile(r"(\d+)-(\d+)")


@dataclass(frozen=True, slots=True)
class Imported:
    """What an import did to one object."""

    service: str
    key: str
    outcome: ImportOutcome
    version: int
    """The object's version afterwards (the one it kept, when ``skipped``)."""


@dataclass(slots=True)
class ImportReport:
    """What :meth:`~restate_redis.RedisStateStore.import_objects` did, counted by outcome."""

    created: int = 0
    overwritten: int = 0
    unchanged: int = 0
    skipped: int = 0
    conflict: int = 0
    """A dry run's objects that an import with ``on_conflict="fail"`` would stop at."""
    dry_run: bool = False
    """Nothing was written: the counts say what the import would do."""

    @property
    def total(self) -> int:
        return self.created + self.overwritten + self.unchanged + self.skipped + self.conflict

    @property
    def written(self) -> int:
        """Objects the import wrote (or would write)."""
        return self.created + self.overwritten

    def add(self, outcome: ImportOutcome) -> None:
        setattr(self, outcome, getattr(self, outcome) + 1)


# -- checks -------------------------------------------------------------------------------------


def _count(value: Any, what: str, line: int, *, positive: bool = False) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < (1 if positive else 0):
        want = "a positive" if positive else "a non-negative"
        raise RecordFormatError(f"{what} must be {want} integer, got {value!r}", line)
    return value


def check_record(record: ObjectRecord, line: int = 0) -> ObjectRecord:
    """``record`` when it is well formed, else :class:`RecordFormatError` naming the field."""
    if not isinstance(record, ObjectRecord):
        raise RecordFormatError(f"expected an ObjectRecord, got {type(record).__name__}", line)
    if not isinstance(record.service, str) or not record.service:
        raise RecordFormatError(f"service must be a non-empty string, got {record.service!r}", line)
    if not isinstance(record.key, str):
        raise RecordFormatError(f"key must be a string, got {record.key!r}", line)
    what = f"{record.service!r}/{record.key!r}"
    if not isinstance(record.state, Mapping):
        raise RecordFormatError(f"{what}: state must be a mapping", line)
    for name, value in record.state.items():
        if not isinstance(name, str):
            raise RecordFormatError(f"{what}: state key {name!r} is not a string", line)
        if not isinstance(value, bytes):
            raise RecordFormatError(
                f"{what}: the value of state key {name!r} must be bytes, "
                f"got {type(value).__name__}",
                line,
            )
    _count(record.version, f"{what}: version", line)
    if record.workflow_status is not None and record.workflow_status not in WORKFLOW_STATUSES:
        raise RecordFormatError(
            f"{what}: workflow status must be null, 'running' or 'completed', got "
            f"{record.workflow_status!r}",
            line,
        )
    if record.ttl_ms is not None:
        _count(record.ttl_ms, f"{what}: ttl_ms", line, positive=True)
    if record.changed_ms is not None:
        _count(record.changed_ms, f"{what}: changed_ms", line)
    last: tuple[int, int] = (0, 0)
    for entry_id, fields in record.history:
        m = _STREAM_ID.fullmatch(entry_id) if isinstance(entry_id, str) else None
        if m is None or (int(m[1]), int(m[2])) <= last:
            raise RecordFormatError(
                f"{what}: history ids must be stream ids '<ms>-<seq>' in increasing order, "
                f"got {entry_id!r}",
                line,
            )
        last = (int(m[1]), int(m[2]))
        if (
            not isinstance(fields, Mapping)
            or not fields
            or not all(isinstance(f, str) and isinstance(v, bytes) for f, v in fields.items())
        ):
            raise RecordFormatError(
                f"{what}: history entry {entry_id} must map field names to bytes", line
            )
    if not isinstance(record.key_ttl_ms, Mapping):
        raise RecordFormatError(f"{what}: key_ttl_ms must be a mapping", line)
    for name, ms in record.key_ttl_ms.items():
        if name not in record.state:
            raise RecordFormatError(f"{what}: key_ttl_ms names {name!r}, not in its state", line)
        _count(ms, f"{what}: key_ttl_ms of {name!r}", line, positive=True)
    return record


# -- JSON Lines ---------------------------------------------------------------------------------


def _dumps(doc: Mapping[str, Any]) -> str:
    # ASCII only: every name survives any terminal, pipe or editor; one line per document
    return json.dumps(doc, ensure_ascii=True, separators=(",", ":"))


def header_line(namespace: str, exported_at_ms: int, services: Iterable[str] | None = None) -> str:
    """The first line of an export file (no newline)."""
    doc: dict[str, Any] = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "namespace": namespace,
        "exported_at_ms": exported_at_ms,
    }
    if services is not None:
        doc["services"] = list(services)
    return _dumps(doc)


def record_to_json(record: ObjectRecord) -> dict[str, Any]:
    """``record`` as the JSON object of its line."""
    return {
        "service": record.service,
        "key": record.key,
        "version": record.version,
        "workflow": record.workflow_status,
        "ttl_ms": record.ttl_ms,
        "changed_ms": record.changed_ms,
        "state": {
            name: base64.b64encode(value).decode("ascii") for name, value in record.state.items()
        },
        "key_ttl_ms": dict(record.key_ttl_ms),
        **(
            {
                "history": [
                    {"id": entry_id, "fields": {f: _b64(v) for f, v in fields.items()}}
                    for entry_id, fields in record.history
                ]
            }
            if record.history
            else {}
        ),
    }


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def record_line(record: ObjectRecord) -> str:
    """One line of an export file for ``record`` (no newline)."""
    return _dumps(record_to_json(record))


_FIELDS = frozenset(
    {
        "service",
        "key",
        "version",
        "workflow",
        "ttl_ms",
        "changed_ms",
        "state",
        "key_ttl_ms",
        "history",
    }
)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for name, value in pairs:
        if name in doc:
            raise ValueError(f"the name {name!r} appears twice in one object")
        doc[name] = value
    return doc


def _parse(text: str, line: int) -> dict[str, Any]:
    try:
        doc = json.loads(text, object_pairs_hook=_no_duplicates)
    except ValueError as exc:
        raise RecordFormatError(f"not a JSON document: {exc}", line) from None
    if not isinstance(doc, dict):
        raise RecordFormatError(f"expected a JSON object, got {type(doc).__name__}", line)
    return doc


def record_from_json(doc: Mapping[str, Any], line: int = 0) -> ObjectRecord:
    """The record a line's JSON object describes; :class:`RecordFormatError` when it does
    not describe one (an unknown or missing field, a value of the wrong kind, bad base64)."""
    unknown = sorted(set(doc) - _FIELDS)
    if unknown:
        raise RecordFormatError(f"unknown field {unknown[0]!r} in a record", line)
    for name in ("service", "key", "state"):
        if name not in doc:
            raise RecordFormatError(f"a record without {name!r}", line)
    state_doc = doc["state"]
    if not isinstance(state_doc, dict):
        raise RecordFormatError("'state' must be a JSON object of base64 strings", line)
    state: dict[str, bytes] = {}
    for name, text in state_doc.items():
        if not isinstance(text, str):
            raise RecordFormatError(f"the value of state key {name!r} is not a string", line)
        try:
            state[name] = base64.b64decode(text.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError) as exc:
            raise RecordFormatError(
                f"the value of state key {name!r} is not base64: {exc}", line
            ) from None
    key_ttls = doc.get("key_ttl_ms") or {}
    if not isinstance(key_ttls, dict):
        raise RecordFormatError("'key_ttl_ms' must be a JSON object", line)
    history: list[HistoryRow] = []
    rows = doc.get("history") or []
    if not isinstance(rows, list):
        raise RecordFormatError("'history' must be a JSON array", line)
    for row in rows:
        if not isinstance(row, dict) or set(row) != {"id", "fields"}:
            raise RecordFormatError('a history entry must be {"id": ..., "fields": {...}}', line)
        if not isinstance(row["fields"], dict):
            raise RecordFormatError("a history entry's 'fields' must be a JSON object", line)
        try:
            fields = {
                name: base64.b64decode(text.encode("ascii"), validate=True)
                for name, text in row["fields"].items()
            }
        except (binascii.Error, UnicodeEncodeError, AttributeError) as exc:
            raise RecordFormatError(
                f"history entry {row['id']!r}: a field is not base64: {exc}", line
            ) from None
        history.append((row["id"], fields))
    record = ObjectRecord(
        service=doc["service"],
        key=doc["key"],
        state=state,
        version=doc.get("version", 0),
        workflow_status=doc.get("workflow"),
        ttl_ms=doc.get("ttl_ms"),
        key_ttl_ms=key_ttls,
        changed_ms=doc.get("changed_ms"),
        history=tuple(history),
    )
    return check_record(record, line)


def read_header(text: str, line: int = 1) -> dict[str, Any]:
    """The header line's JSON object, checked: its format and a version this library reads."""
    doc = _parse(text, line)
    if doc.get("format") != FORMAT:
        raise RecordFormatError(
            f"not a restate-redis export: the first line must be the header "
            f'{{"format": "{FORMAT}", "version": {FORMAT_VERSION}, ...}}',
            line,
        )
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise RecordFormatError(
            f"the header's version must be a positive integer: {version!r}", line
        )
    if version > FORMAT_VERSION:
        raise RecordFormatError(
            f"the file is format version {version}; this restate-redis reads up to "
            f"{FORMAT_VERSION} (upgrade it)",
            line,
        )
    return doc


def read_lines(lines: Iterable[str]) -> Iterator[tuple[int, ObjectRecord]]:
    """(line number, record) for each record of an export file's ``lines``, after checking
    its header; blank lines are skipped. :class:`RecordFormatError` at the first line that
    is not right (a file without a header included), naming its number."""
    header_seen = False
    number = 0
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        if not header_seen:
            read_header(text, number)
            header_seen = True
            continue
        yield number, record_from_json(_parse(text, number), number)
    if not header_seen:
        raise RecordFormatError("an empty file: no header line", max(number, 1))
