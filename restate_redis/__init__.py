"""Restate-style K/V state for Virtual Objects and Workflows, kept in Redis."""

from .errors import (
    CommitError,
    CorruptStateError,
    InvalidNameError,
    InvalidPatchError,
    LeaseLostError,
    LeaseTimeoutError,
    ReadOnlySessionError,
    ReplicationError,
    SessionClosedError,
    StateDecodeError,
    StateEncodeError,
    StateError,
    StateTypeError,
    StoreError,
    StoreUnavailableError,
    UnknownObjectError,
    ValueTooLargeError,
    VersionConflictError,
    WorkflowCompletedError,
    WrongTypeError,
)
from .keyspace import Keyspace
from .serde import BytesSerde, JsonSerde, MsgPackSerde, Serde
from .session import Session
from .store import RedisStateStore

__all__ = [
    # the store and its sessions
    "RedisStateStore",
    "Session",
    "Keyspace",
    # serdes
    "Serde",
    "MsgPackSerde",
    "JsonSerde",
    "BytesSerde",
    # errors
    "StateError",
    "InvalidNameError",
    "StateEncodeError",
    "ValueTooLargeError",
    "StateDecodeError",
    "StateTypeError",
    "ReadOnlySessionError",
    "WrongTypeError",
    "SessionClosedError",
    "LeaseTimeoutError",
    "LeaseLostError",
    "WorkflowCompletedError",
    "CommitError",
    "ReplicationError",
    "StoreUnavailableError",
    "StoreError",
    "CorruptStateError",
    "VersionConflictError",
    "UnknownObjectError",
    "InvalidPatchError",
]
