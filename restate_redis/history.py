"""An object's history: what :class:`History` turns on, what an entry holds, and how a past
state is rebuilt from the entries.

With history on, ``commit.lua`` appends one entry per applied commit to a Redis Stream in the
object's own slot (``restate:{Cart:alice}:history``, see :mod:`restate_redis.keyspace`), in
the same script as the commit: a commit never lands without its entry, nor an entry without
its commit. An entry holds the version the commit made, its commit id, the server's time (the
stream entry id), the origin of the change, and for each state key the commit changed its prior
and its new value (the layout is in ``backend/lua/history.lua``). A ``clear_all`` lists every
key the state held, with its prior value. An entry over ``max_entry_bytes`` keeps the names
only (``values_kept`` False), and a restore cannot go back past it.

A past state is rebuilt from the current one by walking back through the entries newer than
the target version, putting back each change's prior value (:func:`rebuild`). That needs an
unbroken run of entries from the current version down: a commit made without history (by a
store that has it off) breaks the run, and a restore cannot reach past it.

This module is a leaf: it reads no Redis. The store reads the stream and decodes the values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

from .durations import Duration, seconds
from .errors import HistoryNotKeptError, InvalidOptionError, StateDecodeError, where
from .keyspace import commit_tag

Origin = Literal["session", "cli", "ui", "import", "restore"]
ORIGINS: Final = ("session", "cli", "ui", "import", "restore")


class _Marker:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name

    def __reduce__(self) -> str:
        return self._name


ABSENT: Final[Any] = _Marker("ABSENT")
"""A change's ``old`` (or ``new``) when the state key did not exist before (or after)."""
NOT_KEPT: Final[Any] = _Marker("NOT_KEPT")
"""A change's ``old`` and ``new`` in an entry that was over ``max_entry_bytes``: the names of
the changed keys are kept, their values are not."""


@dataclass(frozen=True, slots=True)
class History:
    """Turns on an object's history: ``RedisStateStore(..., history=History(...))``
    (``history=True`` takes these defaults).

    - ``max_versions``: the entries kept per object (at least this many: Redis trims whole
      nodes of the stream, so up to about 100 more stay).
    - ``max_age``: entries older than this are trimmed (seconds or a timedelta; again in
      whole nodes, so a few older ones may stay).
    - ``max_entry_bytes``: an entry whose names and values add up to more keeps the names of
      the changed keys and marks their values as not kept.
    - ``services``: only objects of these services get a history (None: every service).
    - ``only_existing``: add entries only to objects that already have a history, and trim
      nothing (for tools that edit objects whose workers keep a history, with limits the
      tool does not know; the CLI and the UI use it).
    """

    max_versions: int = 1000
    max_age: Duration = timedelta(days=7)
    max_entry_bytes: int = 64 * 1024
    services: Sequence[str] | None = None
    only_existing: bool = False
    _services: frozenset[str] | None = field(init=False, repr=False, compare=False)
    _age_ms: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for what, n in (
            ("max_versions", self.max_versions),
            ("max_entry_bytes", self.max_entry_bytes),
        ):
            if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
                raise InvalidOptionError(f"History {what} must be a positive int, got {n!r}")
        age = seconds(self.max_age, "History max_age")
        services = self.services
        if services is not None and (
            isinstance(services, str) or not all(isinstance(s, str) for s in services)
        ):
            raise InvalidOptionError(
                f"History services must be a list of service names, got {services!r}"
            )
        object.__setattr__(self, "_services", None if services is None else frozenset(services))
        object.__setattr__(self, "_age_ms", max(1, int(age * 1000)))

    def covers(self, service: str) -> bool:
        """True when objects of ``service`` get a history."""
        return self._services is None or service in self._services

    def spec(self, service: str, origin: str) -> str:
        """commit.lua's history argument for a commit of ``origin`` on ``service``: "" off."""
        if not self.covers(service):
            return ""
        if self.only_existing:
            return f"0 0 {self.max_entry_bytes} {origin}"
        return f"{self.max_versions} {self._age_ms} {self.max_entry_bytes} {origin}"


def history_option(value: object) -> History | None:
    """The store's ``history=`` argument: a History, True (the defaults), False or None."""
    if value is None or value is False:
        return None
    if value is True:
        return History()
    if isinstance(value, History):
        return value
    raise InvalidOptionError(f"history must be a History, True or None, got {type(value).__name__}")


def check_origin(origin: object) -> str:
    if origin not in ORIGINS:
        raise InvalidOptionError(f"origin must be one of {', '.join(ORIGINS)}; got {origin!r}")
    return str(origin)


def follow_spec(origin: str, max_entry_bytes: int = 64 * 1024) -> str:
    """The history argument of a commit that adds its entry only to an existing history."""
    return f"0 0 {max_entry_bytes} {origin}"


# -- entries ------------------------------------------------------------------------------------

Decode = Callable[[str, bytes], Any]
"""(state key, stored bytes) -> the value, as the store's codecs and serde read it."""


@dataclass(frozen=True, slots=True)
class Change:
    """What one commit did to one state key. ``old_bytes`` / ``new_bytes`` are the stored
    bytes (:data:`ABSENT` where the key did not exist, :data:`NOT_KEPT` in an entry over
    ``max_entry_bytes``); ``old`` / ``new`` the values decoded by the store's codecs and serde
    (decoded when read: a value the store cannot decode raises then)."""

    name: str
    old_bytes: Any
    new_bytes: Any
    _decode: Decode = field(repr=False, compare=False)

    @property
    def old(self) -> Any:
        """The value before the commit, decoded; ABSENT or NOT_KEPT."""
        return self._value(self.old_bytes)

    @property
    def new(self) -> Any:
        """The value the commit left, decoded; ABSENT or NOT_KEPT."""
        return self._value(self.new_bytes)

    def _value(self, raw: Any) -> Any:
        if raw is ABSENT or raw is NOT_KEPT:
            return raw
        return self._decode(self.name, raw)


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One applied commit of one object, as its history keeps it."""

    service: str
    key: str
    version: int
    """The version this commit made (the object's version right after it)."""
    commit_id: str | None
    """The commit id the caller gave (a Restate invocation id, say); None when the store
    made one up for the session."""
    at: datetime
    """When it was applied, by the server's clock (UTC, ms)."""
    origin: str
    """What made it: "session", "cli", "ui", "import" or "restore"."""
    changes: Mapping[str, Change]
    """The state keys it changed, by name."""
    cleared_all: bool
    """It began with a clear_all (``changes`` then lists every key the state held)."""
    values_kept: bool
    """False for an entry over ``max_entry_bytes``: names only, values NOT_KEPT."""
    entry_id: str
    """The stream entry id (``<ms>-<seq>``)."""
    commit_tag: str = field(default="", repr=False)
    prior_version: int = -1
    """The version the object had before this entry: ``version - 1``, but for an import,
    which keeps its record's version."""

    def __post_init__(self) -> None:
        if self.prior_version < 0:
            object.__setattr__(self, "prior_version", self.version - 1)

    """The commit id the script saw (the caller's, or the one the store made up)."""


def _text(raw: bytes | str) -> str:
    return raw.decode("utf-8", "surrogateescape") if isinstance(raw, bytes) else raw


def parse_changes(blob: bytes) -> list[tuple[str, Any, Any]]:
    """The ``d`` field of an entry: (name, old, new) per changed key (see history.lua)."""
    out: list[tuple[str, Any, Any]] = []
    pos, end = 0, len(blob)
    while pos < end:
        colon = blob.index(b":", pos)
        n = int(blob[pos:colon])
        name = blob[colon + 1 : colon + 1 + n].decode("utf-8")
        pos = colon + 1 + n
        om, nm = blob[pos : pos + 1], blob[pos + 1 : pos + 2]
        c1 = blob.index(b":", pos + 2)
        c2 = blob.index(b":", c1 + 1)
        lo, ln = int(blob[pos + 2 : c1]), int(blob[c1 + 1 : c2])
        pos = c2 + 1
        old, new = blob[pos : pos + lo], blob[pos + lo : pos + lo + ln]
        pos += lo + ln
        if pos > end:
            raise ValueError("truncated")
        out.append((name, _mark(om, old), _mark(nm, new)))
    return out


def _mark(mark: bytes, value: bytes) -> Any:
    if mark == b"+":
        return value
    if mark == b"-":
        return ABSENT
    if mark == b"?":
        return NOT_KEPT
    raise ValueError(f"unknown mark {mark!r}")


def parse_entry(
    service: str, key: str, entry_id: bytes | str, fields: Mapping[bytes, bytes], decode: Decode
) -> HistoryEntry:
    """A stream entry as a HistoryEntry; StateDecodeError when it does not parse."""
    eid = _text(entry_id)
    try:
        flags = _text(fields.get(b"x", b""))
        tag = _text(fields.get(b"c", b""))
        changes = {
            name: Change(name, old, new, decode) for name, old, new in parse_changes(fields[b"d"])
        }
        return HistoryEntry(
            service,
            key,
            int(fields[b"v"]),
            tag if "n" in flags and tag else None,
            datetime.fromtimestamp(int(eid.partition("-")[0]) / 1000, UTC),
            _text(fields[b"o"]),
            changes,
            "a" in flags,
            "k" not in flags,
            eid,
            tag,
            int(fields.get(b"p", -1)),
        )
    except (KeyError, ValueError, UnicodeDecodeError) as exc:
        raise StateDecodeError(
            f"history entry {eid} of {where(service, key)} does not parse (it was not written "
            f"by restate-redis): {exc!r}"
        ) from exc


# -- restoring ----------------------------------------------------------------------------------


def reach(
    newest_first: Iterable[HistoryEntry], version: int, last_commit: str | None
) -> tuple[list[HistoryEntry], int]:
    """The unbroken run of entries from the current ``version`` down (newest first), and the
    oldest version a restore can reach through it. The run ends at a missing version (a
    commit without history, or trimmed entries), at an entry whose values were not kept, and
    at the start of the log. ``last_commit``: the object's last commit (the bookkeeping's c,
    :func:`~restate_redis.keyspace.commit_tag` of its id), which the newest entry must carry,
    or None to skip that check."""
    run: list[HistoryEntry] = []
    expected = version
    for entry in newest_first:
        if entry.version != expected:
            break
        if not run and last_commit is not None and commit_tag(entry.commit_tag) != last_commit:
            break  # the log's newest entry is not of the object's last commit
        if not entry.values_kept:
            break
        run.append(entry)
        expected = entry.prior_version
        if expected == 0:
            break
    return run, expected


def rebuild(
    current: Mapping[str, bytes], run: Iterable[HistoryEntry], target: int
) -> dict[str, bytes]:
    """The state at version ``target``: ``current`` with the prior values of every entry of
    ``run`` (newest first) made since ``target`` put back (an import keeps the version of its
    record: its entry follows the version it replaced, ``prior_version``)."""
    state = dict(current)
    for entry in run:
        if entry.prior_version < target:
            break
        for name, change in entry.changes.items():
            if change.old_bytes is ABSENT:
                state.pop(name, None)
            else:
                state[name] = change.old_bytes
    return state


def version_at(entries_newest_first: Sequence[HistoryEntry], at: datetime) -> int | None:
    """The version the object had at time ``at`` as far as the entries tell: the newest entry
    committed at or before it; 0 when every entry is later and the log starts at version 1;
    None when the log does not reach back that far."""
    if at.tzinfo is None:
        raise InvalidOptionError(f"at must be a timezone-aware datetime, got {at!r}")
    for entry in entries_newest_first:
        if entry.at <= at:
            return entry.version
    if entries_newest_first and entries_newest_first[-1].version == 1:
        return 0
    return None


def not_kept(
    service: str, key: str, wanted: str, earliest: int, run: Sequence[HistoryEntry], current: int
) -> HistoryNotKeptError:
    """The error for a restore to ``wanted`` beyond the history's reach ``earliest``."""
    what = where(service, key)
    if earliest >= current:
        return HistoryNotKeptError(
            f"cannot restore {what} to {wanted}: its history does not reach back past its "
            f"current version {current} (no history kept for its last commit: is the store's "
            f"history= option on?)",
            None,
            None,
        )
    oldest = run[-1]
    when = oldest.at.isoformat(timespec="milliseconds")
    return HistoryNotKeptError(
        f"cannot restore {what} to {wanted}: its history reaches back to version {earliest} "
        f"(the state before the commit of {when}) at the earliest",
        earliest,
        oldest.at,
    )
