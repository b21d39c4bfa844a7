"""The exceptions of restate-redis: one root, grouped by what the caller can do about them.

Messages name the service, the object key and, where one is involved, the state key::

    StateError                         every error this library raises
    ├── UsageError                     the call was wrong: fix the code
    │   ├── InvalidOptionError         a store / session option (also ValueError, TypeError)
    │   ├── InvalidNameError           a service, object key or state key (also TypeError)
    │   ├── StateEncodeError           set() of a value the serde cannot encode
    │   ├── ValueTooLargeError         set() of a value over max_value_bytes
    │   ├── ReadOnlySessionError       a write in a shared session
    │   ├── SessionClosedError         a session used outside its async with
    │   ├── InvalidPatchError          a JSON Patch that is malformed or does not apply
    │   └── ServerFeatureError         the server lacks what the call needs (a state key's
    │                                  own expiry: Redis 7.4+, Valkey 9+)
    ├── DataError                      what is stored is not what was expected
    │   ├── StateDecodeError           bytes the serde or a codec cannot decode
    │   │   ├── StateTypeError         decoded data that does not fit type_hint
    │   │   └── EncryptedValueError    a value encrypted under a key the store does not have
    │   ├── WrongTypeError             a Redis key of another type than this library writes
    │   ├── CorruptStateError          bookkeeping that does not parse
    │   ├── UnknownObjectError         no such object or state key
    │   └── HistoryNotKeptError        a restore (or undo) further back than the object's
    │                                  history reaches, or an object without history
    ├── ConcurrencyError               another session got in the way: retry, or re-read
    │   ├── LeaseTimeoutError          the lease was not acquired within acquire_timeout
    │   ├── LeaseLostError             the lease expired before the commit: nothing written
    │   ├── VersionConflictError       the object changed since it was read
    │   ├── WorkflowCompletedError     the workflow's run already completed
    │   └── ImportConflictError        an import met an object the target holds otherwise
    └── AvailabilityError              Redis is not there, or would not do it
        ├── StoreUnavailableError      not reachable within the retry budget
        ├── StoreError                 a refusal a retry cannot fix (credentials, ACL)
        ├── CommitError                a commit that could not be confirmed
        │   └── ReplicationError       applied, but fewer replicas than min_replicas
        └── EmbeddedServerError        the embedded server did not start
"""

from __future__ import annotations


class StateError(Exception):
    """Root of every error this library raises."""


def where(service: str, key: str, name: str | None = None) -> str:
    """The 'service/key[name]' phrase every message uses."""
    text = f"{service!r}/{key!r}"
    return text if name is None else f"{text} state key {name!r}"


# -- the groups ---------------------------------------------------------------------------------


class UsageError(StateError):
    """The call was wrong (an option, a name, a value, a session used the wrong way)."""


class DataError(StateError):
    """What is stored in Redis is not what this library expected to read."""


class ConcurrencyError(StateError):
    """Another session, handler or edit got in the way; retrying or re-reading may succeed."""


class AvailabilityError(StateError):
    """Redis could not be reached, or would not do what was asked."""


# -- usage --------------------------------------------------------------------------------------


class InvalidOptionError(UsageError, ValueError, TypeError):
    """A store, session or connection option has a wrong type or value."""


class InvalidNameError(UsageError, TypeError):
    """A service name, object key or state key is not a usable str."""


class StateEncodeError(UsageError, TypeError):
    """The serde cannot encode a value passed to set()."""


class ValueTooLargeError(UsageError, ValueError):
    """An encoded value is larger than the store's max_value_bytes."""


class ReadOnlySessionError(UsageError):
    """A write was attempted in a shared (read-only) session."""


class SessionClosedError(UsageError):
    """The session was used outside its ``async with`` block."""


class InvalidPatchError(UsageError, ValueError):
    """A JSON Patch (RFC 6902) is malformed or does not apply to the object's state."""


class ServerFeatureError(UsageError):
    """The Redis server lacks a feature the call needs: ``set(..., ttl=...)`` needs hash-field
    expiry (Redis 7.4+, Valkey 9+). The message names the server and its version."""


# -- data ---------------------------------------------------------------------------------------


class StateDecodeError(DataError, ValueError):
    """Stored bytes could not be decoded by the serde, or by a codec (a tampered ciphertext)."""


class StateTypeError(StateDecodeError, TypeError):
    """Decoded data does not fit the requested type_hint."""


class EncryptedValueError(StateDecodeError):
    """A value is encrypted under a key the store does not have: it has no Encryption, or
    its key ring lacks the value's key id (``key_id``)."""

    def __init__(self, message: str, key_id: str | None = None) -> None:
        super().__init__(message)
        self.key_id = key_id


class WrongTypeError(DataError):
    """A Redis key where this library expects a hash holds another type."""


class CorruptStateError(DataError, ValueError):
    """The object's bookkeeping in Redis does not parse (it was not written by this library)."""


class UnknownObjectError(DataError, LookupError):
    """The named object, workflow or state key does not exist."""


class HistoryNotKeptError(DataError, LookupError):
    """A restore (or undo) further back than the object's history reaches, or on an object
    that has no history. ``earliest_version`` is the oldest version a restore can reach
    (None: none), ``earliest_at`` when it was committed (None: unknown)."""

    def __init__(
        self, message: str, earliest_version: int | None = None, earliest_at: object = None
    ) -> None:
        super().__init__(message)
        self.earliest_version = earliest_version
        self.earliest_at = earliest_at


# -- concurrency --------------------------------------------------------------------------------


class LeaseTimeoutError(ConcurrencyError, TimeoutError):
    """The object's exclusive lease could not be acquired within acquire_timeout."""


class LeaseLostError(ConcurrencyError):
    """The session's lease expired or was taken over; its writes were not applied."""


class VersionConflictError(ConcurrencyError):
    """The object changed since its state was read; an edit checked against it wrote nothing."""


class WorkflowCompletedError(ConcurrencyError):
    """A run session was opened for a workflow whose run already completed."""


class ImportConflictError(ConcurrencyError):
    """An import with ``on_conflict="fail"`` met an object the target already holds in
    another form (another version, workflow status or state); that object was not written."""


# -- availability -------------------------------------------------------------------------------


class StoreUnavailableError(AvailabilityError, ConnectionError):
    """Redis could not be reached within the retry budget."""


class StoreError(AvailabilityError):
    """Redis refused a command for a reason a retry cannot fix (credentials, ACL, a script)."""


class CommitError(AvailabilityError):
    """A commit could not be confirmed (connection lost, replicas missing); see the message."""


class ReplicationError(CommitError):
    """A commit was applied on the primary but fewer replicas than min_replicas confirmed it."""


class EmbeddedServerError(AvailabilityError):
    """The embedded Valkey server (restate-redis demo / bench) could not be started."""
