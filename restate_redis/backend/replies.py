"""The replies of the Lua scripts, decoded in this one place into typed results.

Each script's header (``lua/*.lua``) documents its reply; :class:`Status` names the codes
they share. The session acts on these results, the observer describes them, replication
checks them: none of them reads a raw reply.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import IntEnum
from typing import Any


class Status(IntEnum):
    """The first element of an open, commit or purge reply."""

    NO_FIELD_EXPIRY = -5
    """A commit gave a state key an expiry on a server without hash-field expiry: (server
    name and version, its error) follow; nothing was written."""
    CORRUPT = -4
    """A meta field does not parse: (field, value) follow."""
    LEASE_LOST = -3
    """The commit's (or purge's) lease is no longer held by its token."""
    COMPLETED = -2
    """A workflow run session for a workflow whose run already completed."""
    WRONG_TYPE = -1
    """A key holds a type this library never writes there: (type, key) follow."""
    BUSY = 0
    """Another session holds the lease: its remaining ttl in ms follows."""
    OK = 1
    """Done."""
    ALREADY_APPLIED = 2
    """A commit whose id was applied before: recognised, not applied again."""


class Replay(IntEnum):
    """How an open that recognised its commit id as applied presents the prior state."""

    NONE = 0
    """Not a replay."""
    WHOLE = 1
    """The whole prior state follows, as field, value pairs."""
    OVERLAY = 2
    """The prior values of the keys the commit changed follow ("+" value or "-"); the rest
    reads from the state."""
    OLD = 3
    """The prior state reads from the ``old`` key (a clear_all renamed it aside)."""


def text(raw: bytes | str | None) -> str:
    """A reply element as text ("" for nil)."""
    if raw is None:
        return ""
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


@dataclass(frozen=True, slots=True)
class Refusal:
    """A reply that refused the call; what it names, for the error message."""

    status: Status
    found: str = ""
    """WRONG_TYPE: the type found; CORRUPT: the meta field; NO_FIELD_EXPIRY: the server."""
    where: str = ""
    """WRONG_TYPE: the Redis key; CORRUPT: the value found; NO_FIELD_EXPIRY: its error."""
    pttl: int = 0
    """BUSY: milliseconds until the holder's lease expires."""
    after_retry: bool = False
    """LEASE_LOST of a commit retried after a lost reply: it may or may not have applied."""


# Status by code, and Replay by code: a lookup, not an Enum call, on the hot path.
_STATUS = {int(s): s for s in Status}
_REPLAY = tuple(Replay)
_MODES = {b"eager": "eager", b"lazy": "lazy", b"preload": "preload", b"cached": "cached"}


def refusal(reply: Any) -> Refusal | None:
    """The refusal an open / commit / purge reply holds, or None when it did its work."""
    code = reply[0]
    if code == 1 or code == 2:  # OK, ALREADY_APPLIED: the common case first
        return None
    status = _STATUS[int(code)]
    if status in (Status.WRONG_TYPE, Status.CORRUPT, Status.NO_FIELD_EXPIRY):
        return Refusal(status, text(reply[1]), text(reply[2]))
    if status is Status.BUSY:
        return Refusal(status, pttl=int(reply[1]))
    return Refusal(status)


@dataclass(frozen=True, slots=True)
class Opened:
    """open.lua's reply for a session that opened."""

    version: int
    workflow_status: str | None
    mode: str
    """What was loaded: "eager", "preload" or "lazy" (also when eager fell back), or
    "cached": nothing, the snapshot the open named is still the state."""
    replay: Replay
    commit_id: str
    """The last commit of the object: ``keyspace.commit_tag`` of its id ("" when none is
    recorded)."""
    data: list[Any]
    """eager / WHOLE: field, value pairs; preload, lazy: one value or None per name read;
    OVERLAY: field, "+" value or "-" pairs; otherwise empty."""
    expires_at: float | None = None
    """``time.monotonic()`` at which the first state key with an expiry of its own expires
    (what was read is right until then); None when no key has one."""

    @classmethod
    def parse(cls, reply: Any, sent: float | None = None) -> Opened:
        """``sent``: ``time.monotonic()`` when the open was sent (the expiry counts from then:
        never later than the server's), else now."""
        status, mode, commit_id, expires_in = reply[2], reply[3], reply[5], int(reply[6])
        if expires_in >= 0:
            expires_at: float | None = (sent if sent is not None else time.monotonic()) + (
                expires_in / 1000
            )
        else:
            expires_at = None
        return cls(
            int(reply[1]),
            text(status) if status else None,
            _MODES.get(mode) or text(mode),
            _REPLAY[int(reply[4])],
            text(commit_id),
            reply[7:],
            expires_at,
        )


class Released(IntEnum):
    """release.lua's reply: falsy when the lease was not held."""

    NOT_HELD = 0
    RELEASED = 1
    SIGNALLED = 2
    """Released, and a session waiting for the lease was woken."""


@dataclass(frozen=True, slots=True)
class Committed:
    """commit.lua's (or purge.lua's) reply for a commit that applied or was recognised."""

    status: Status
    version: int
    """The version after the commit; for a purge, how many keys it removed."""
    signalled: bool = False
    """Its release woke a session waiting for the lease (of this process or another)."""

    @classmethod
    def parse(cls, reply: Any) -> Committed:
        version = reply[1] if len(reply) > 1 else None
        signalled = len(reply) > 2 and int(reply[2]) == 1
        return cls(_STATUS[int(reply[0])], int(version) if version is not None else 0, signalled)
