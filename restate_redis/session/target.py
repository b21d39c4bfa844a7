"""What every part of a session shares: the backend it runs on and the store's options (each
seen through a Protocol), the object it is about, and the errors that name it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import Any, Literal, Protocol, TypeVar

from redis.exceptions import ResponseError

from ..backend.engine import CommitRequest, Cursor, SessionRef
from ..backend.replies import Committed, Opened, Refusal, Released
from ..codecs import CodecChain
from ..errors import CorruptStateError, InvalidNameError, StateDecodeError, WrongTypeError, where
from ..keyspace import Keyspace
from ..observe import Observer
from ..serde import Serde
from .cache import SnapshotCache
from .handoff import LocalLeases

T = TypeVar("T")
StatePreload = bool | list[str] | tuple[str, ...]
Kind = Literal["object", "workflow"]

MISSING: Any = object()  # cached "this key does not exist"


class Backend(Protocol):
    """The round trips a session makes, each one call (retried and traced on the other side),
    each given the session as the backend sees it (a :class:`Target` is one);
    :class:`restate_redis.backend.engine.RedisBackend` is the one on Redis."""

    lease_ttl: float
    wait_slice: float
    """The longest single :meth:`wait`."""

    @property
    def replicated(self) -> bool:
        """Commits wait for replicas."""
        ...

    def field_expiry_missing(self) -> str | None:
        """Why a state key cannot get an expiry of its own on this server (naming it and its
        version), or None: it can, or that is not known yet (then the commit checks)."""
        ...

    def open(
        self, ref: SessionRef, cached: tuple[int, str, int] | None = None, names: Sequence[str] = ()
    ) -> Awaitable[Opened | Refusal]:
        """Take the lease (none for a shared session) and read what the mode needs, or
        nothing when the snapshot ``cached`` names is still the state; ``names``: the state
        keys a lazy session reads with its open."""
        ...

    def commit(self, ref: SessionRef, request: CommitRequest) -> Awaitable[Committed | Refusal]:
        """Apply the request's writes atomically and release (or hand over) the lease."""
        ...

    def purge(self, ref: SessionRef) -> Awaitable[Committed | Refusal]:
        """Remove every key of the object, under the lease."""
        ...

    def release(self, ref: SessionRef, handoff: str = "") -> Awaitable[Released | Refusal]:
        """Give the lease up without writing (``handoff``: to that token); falsy when it
        was no longer held, SIGNALLED when it woke a waiting session."""
        ...

    def release_soon(self, ref: SessionRef) -> asyncio.Future[None] | None:
        """Give the lease up without writing, without waiting for the reply: None when the
        release goes out ahead of any command sent after it, else what ends with it."""
        ...

    def release_later(self, ref: SessionRef) -> None:
        """Release the lease the session may hold, in a task that outlives it."""
        ...

    def renew(self, ref: SessionRef) -> Awaitable[bool]:
        """Extend the lease; False when it is no longer held."""
        ...

    def read_field(self, ref: SessionRef, source: str, name: str) -> Awaitable[bytes | None]:
        """One state key of hash ``source``."""
        ...

    def read_names(
        self, ref: SessionRef, source: str, cursor: Cursor, *, values: bool, whole: int, page: int
    ) -> Awaitable[tuple[Cursor, list[Any]]]:
        """The fields (``values``: and their values) of hash ``source``: all of them at once
        up to ``whole``, else a page of about ``page`` from ``cursor``."""
        ...

    def wait(self, ref: SessionRef, seconds: float) -> Awaitable[None]:
        """Block up to ``seconds`` for the lease's release."""
        ...


class SessionHost(Protocol):
    """What a session needs of its store (:class:`~restate_redis.RedisStateStore` is one; the
    session never imports it)."""

    @property
    def backend(self) -> Backend: ...
    @property
    def keyspace(self) -> Keyspace: ...
    @property
    def serde(self) -> Serde[Any]: ...
    @property
    def codec(self) -> CodecChain: ...
    @property
    def telemetry(self) -> Observer: ...
    @property
    def acquire_timeout(self) -> float: ...
    @property
    def max_value_bytes(self) -> int: ...
    @property
    def snapshots(self) -> SnapshotCache | None: ...
    @property
    def local_leases(self) -> LocalLeases: ...


class Target(SessionRef):
    """One session's object as every part of the session sees it: what the backend sees of
    it (:class:`SessionRef`), the backend itself, and the errors that name the object."""

    __slots__ = ("backend",)
    backend: Backend
    """Set by the session right after it makes its target."""

    @property
    def where(self) -> str:
        """The 'service'/'key' phrase error messages use for this session."""
        return where(self.record.service, self.record.key)

    async def read(self, source: str, call: Awaitable[T]) -> T:
        """A round trip that reads hash ``source``: another type there is a WrongTypeError."""
        try:
            return await call
        except (ResponseError, WrongTypeError) as exc:
            if isinstance(exc, WrongTypeError) or "WRONGTYPE" in str(exc):
                raise self.wrong_type(b"non-hash", source) from exc
            raise

    # -- names and errors ------------------------------------------------------------------------

    def check_name(self, name: object) -> str:
        """A state key as given, once it is known to be a str that encodes to UTF-8."""
        if type(name) is str and name.isascii():
            return name  # the common case: nothing that can fail to encode
        if not isinstance(name, str):
            raise InvalidNameError(
                f"state key of {self.where} must be a str, got {type(name).__name__}"
            )
        try:
            name.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidNameError(
                f"state key {name!r} of {self.where} is not valid UTF-8: {exc.reason}"
            ) from None
        return name

    def field(self, raw: bytes | str) -> str:
        """A hash field read from Redis as a state key."""
        if isinstance(raw, str):
            return raw
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise StateDecodeError(
                f"{self.where} has a state key that is not UTF-8: {raw!r}"
            ) from exc

    def wrong_type(self, found: bytes | str, redis_key: bytes | str) -> WrongTypeError:
        key = _text(redis_key)
        want = {"lease": "string", "wait": "string", "wake": "list", "commits": "sorted set"}.get(
            key.rpartition(":")[2], "hash"
        )
        return WrongTypeError(
            f"Redis key {key!r} of {self.where} holds a {_text(found)}, not a {want}; it was "
            f"not written by restate-redis, and nothing was written"
        )

    def corrupt(self, field: bytes | str, value: bytes | str) -> CorruptStateError:
        return CorruptStateError(
            f"the bookkeeping of {self.where} does not parse: field {_text(field)!r} of "
            f"{self.keys.state!r} holds {value!r}; it was not written by restate-redis, and "
            f"nothing was written"
        )


def _text(raw: bytes | str | None) -> str:
    if raw is None:
        return ""
    return raw.decode() if isinstance(raw, bytes) else str(raw)
