"""What every part of a session shares: the store it runs on (seen through a Protocol), the
object it is about, its round trips, and the errors that name it."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, Literal, Protocol, TypeVar

from redis.exceptions import ResponseError

from ..backend.scripts import Scripts
from ..backend.wire import Wire
from ..codecs import CodecChain
from ..errors import CorruptStateError, InvalidNameError, StateDecodeError, WrongTypeError, where
from ..keyspace import Keyspace, ObjectKeys
from ..observe import ROUNDTRIP, Observer, Op, SessionRecord
from ..serde import Serde

T = TypeVar("T")
StatePreload = bool | list[str] | tuple[str, ...]
Kind = Literal["object", "workflow"]
Mode = Literal["eager", "lazy", "preload"]
Detail = tuple[str, str | None]  # (Redis command, state key) of a round trip, for its span

MISSING: Any = object()  # cached "this key does not exist"


class SessionHost(Protocol):
    """What a session needs of its store: the options, the command path and the observer
    (:class:`~restate_redis.RedisStateStore` is one; the session never imports it)."""

    client: Any
    keyspace: Keyspace
    serde: Serde[Any]
    codec: CodecChain
    scripts: Scripts
    wire: Wire
    telemetry: Observer
    lease_ttl: float
    lease_ttl_ms: int
    acquire_timeout: float
    wait_slice: float
    eager_state_size_limit: int
    eager_state_field_limit: int
    max_value_bytes: int
    min_replicas: int

    def roundtrip(self, op: Op, target: Target, call: Callable[[], Awaitable[T]]) -> Awaitable[T]:
        """Every round trip of the session passes here (retries, tracing)."""
        ...

    def run_commit(self, keys: list[str], args: list[Any], where: str) -> Awaitable[Any]:
        """Run commit.lua once (with WAIT for ``min_replicas``)."""
        ...

    def release_later(self, keys: ObjectKeys, token: str) -> None:
        """Release the lease ``token`` may hold, in a task that outlives the session."""
        ...


class Target:
    """One session's object: its Redis keys, its record, its round trips and its errors."""

    def __init__(self, host: SessionHost, service: str, key: str, record: SessionRecord) -> None:
        self.host = host
        self.service = service
        self.key = key
        self.record = record
        self.keys = host.keyspace.object_keys(service, key)

    @functools.cached_property
    def where(self) -> str:
        """The 'service'/'key' phrase error messages use for this session."""
        return where(self.service, self.key)

    def call(
        self, op: Op, call: Callable[[], Awaitable[T]], detail: Detail | None = None
    ) -> Awaitable[T]:
        """One round trip through the store (retries, tracing)."""
        if detail is None:
            return self.host.roundtrip(op, self, call)  # no frame of its own on the hot path
        return self._detailed(op, call, detail)

    async def _detailed(self, op: Op, call: Callable[[], Awaitable[T]], detail: Detail) -> T:
        token = ROUNDTRIP.set(detail)
        try:
            return await self.host.roundtrip(op, self, call)
        finally:
            ROUNDTRIP.reset(token)

    async def read(
        self, op: Op, source: str, call: Callable[[], Awaitable[T]], detail: Detail | None = None
    ) -> T:
        """A round trip that reads hash ``source``: another type there is a WrongTypeError."""
        try:
            return await self.call(op, call, detail)
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
        want = {"lease": "string", "wake": "list", "commits": "sorted set"}.get(
            key.rpartition(":")[2], "hash"
        )
        return WrongTypeError(
            f"Redis key {key!r} of {self.where} holds a {_text(found)}, not a {want}; it was "
            f"not written by restate-redis, and nothing was written"
        )

    def corrupt(self, field: bytes | str, value: bytes | str) -> CorruptStateError:
        return CorruptStateError(
            f"the bookkeeping of {self.where} does not parse: field {_text(field)!r} of "
            f"{self.keys.meta!r} holds {value!r}; it was not written by restate-redis, and "
            f"nothing was written"
        )


def _text(raw: bytes | str | None) -> str:
    if raw is None:
        return ""
    return raw.decode() if isinstance(raw, bytes) else str(raw)
