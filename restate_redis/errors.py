"""The exceptions of restate-redis: one root, a shallow tree, a line of docstring each.

Messages name the service, the object key and, where one is involved, the state key.
"""

from __future__ import annotations


class StateError(Exception):
    """Root of every error this library raises."""


def where(service: str, key: str, name: str | None = None) -> str:
    """The 'service/key[name]' phrase every message uses."""
    text = f"{service!r}/{key!r}"
    return text if name is None else f"{text} state key {name!r}"


class InvalidNameError(StateError, TypeError):
    """A service name, object key or state key is not a usable str."""


class StateEncodeError(StateError, TypeError):
    """The serde cannot encode a value passed to set()."""


class ValueTooLargeError(StateError, ValueError):
    """An encoded value is larger than the store's max_value_bytes."""


class StateDecodeError(StateError, ValueError):
    """Stored bytes could not be decoded by the serde."""


class StateTypeError(StateDecodeError, TypeError):
    """Decoded data does not fit the requested type_hint."""


class ReadOnlySessionError(StateError):
    """A write was attempted in a shared (read-only) session."""


class WrongTypeError(StateError):
    """A Redis key where this library expects a hash holds another type."""


class SessionClosedError(StateError):
    """The session was used outside its ``async with`` block."""


class LeaseTimeoutError(StateError, TimeoutError):
    """The object's exclusive lease could not be acquired within acquire_timeout."""


class LeaseLostError(StateError):
    """The session's lease expired or was taken over; its writes were not applied."""


class WorkflowCompletedError(StateError):
    """A run session was opened for a workflow whose run already completed."""


class CommitError(StateError):
    """A commit could not be confirmed (connection lost, replicas missing); see the message."""


class ReplicationError(CommitError):
    """A commit was applied on the primary but fewer replicas than min_replicas confirmed it."""


class StoreUnavailableError(StateError, ConnectionError):
    """Redis could not be reached within the retry budget."""


class StoreError(StateError):
    """Redis refused a command for a reason a retry cannot fix (credentials, ACL, a script)."""


class CorruptStateError(StateError, ValueError):
    """The object's bookkeeping in Redis does not parse (it was not written by this library)."""


class VersionConflictError(StateError):
    """The object changed since its state was read; an edit checked against it wrote nothing."""


class UnknownObjectError(StateError, LookupError):
    """The named object, workflow or state key does not exist."""


class InvalidPatchError(StateError, ValueError):
    """A JSON Patch (RFC 6902) is malformed or does not apply to the object's state."""


class EmbeddedServerError(StateError):
    """The embedded Valkey server (restate-redis demo / bench) could not be started."""
