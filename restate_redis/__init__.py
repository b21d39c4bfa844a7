"""Restate-style K/V state for Virtual Objects and Workflows, kept in Redis.

The public surface, by concept: the store and its sessions; how values are encoded (and
compressed or encrypted at rest); the
errors, grouped under one root by what the caller can do (see :mod:`restate_redis.errors`).
Everything else is internal.
"""

from .codecs import Compression, Encryption
from .errors import (
    AvailabilityError,
    CommitError,
    ConcurrencyError,
    CorruptStateError,
    DataError,
    EmbeddedServerError,
    EncryptedValueError,
    HistoryNotKeptError,
    ImportConflictError,
    InvalidNameError,
    InvalidOptionError,
    InvalidPatchError,
    LeaseLostError,
    LeaseTimeoutError,
    ReadOnlySessionError,
    ReplicationError,
    ServerFeatureError,
    SessionClosedError,
    StateDecodeError,
    StateEncodeError,
    StateError,
    StateTypeError,
    StoreError,
    StoreUnavailableError,
    UnknownObjectError,
    UsageError,
    ValueTooLargeError,
    VersionConflictError,
    WorkflowCompletedError,
    WrongTypeError,
)
from .ext.otel import Telemetry as _Telemetry  # noqa: F401 (registers the OpenTelemetry observer)
from .history import ABSENT, NOT_KEPT, Change, History, HistoryEntry
from .keyspace import Keyspace
from .records import (
    Imported,
    ImportOutcome,
    ImportReport,
    ObjectRecord,
    OnConflict,
    RecordFormatError,
)
from .serde import BytesSerde, JsonSerde, MsgPackSerde, Serde
from .session import Session
from .store import ObjectExport, RedisStateStore

__all__ = [
    # the store and its sessions
    "RedisStateStore",
    "Session",
    "Keyspace",
    # whole objects: export and import
    "ObjectRecord",
    "ObjectExport",
    "Imported",
    "ImportReport",
    "ImportOutcome",
    "OnConflict",
    "RecordFormatError",
    # history: undo, point-in-time restore, watch
    "History",
    "HistoryEntry",
    "Change",
    "ABSENT",
    "NOT_KEPT",
    # values
    "Serde",
    "MsgPackSerde",
    "JsonSerde",
    "BytesSerde",
    # values at rest: compression and encryption
    "Compression",
    "Encryption",
    # errors: the root
    "StateError",
    # usage: fix the call
    "UsageError",
    "InvalidOptionError",
    "InvalidNameError",
    "StateEncodeError",
    "ValueTooLargeError",
    "ReadOnlySessionError",
    "SessionClosedError",
    "InvalidPatchError",
    "ServerFeatureError",
    # data: what is stored is not what was expected
    "DataError",
    "StateDecodeError",
    "StateTypeError",
    "EncryptedValueError",
    "WrongTypeError",
    "CorruptStateError",
    "UnknownObjectError",
    "HistoryNotKeptError",
    # concurrency: another session got in the way
    "ConcurrencyError",
    "LeaseTimeoutError",
    "LeaseLostError",
    "VersionConflictError",
    "WorkflowCompletedError",
    "ImportConflictError",
    # availability: Redis is not there, or would not do it
    "AvailabilityError",
    "StoreUnavailableError",
    "StoreError",
    "CommitError",
    "ReplicationError",
    "EmbeddedServerError",
]
