"""What an observer (tracing, metrics) sees of a session's round trips, and how one is plugged
in without the core importing it.

Each session keeps one :class:`SessionRecord` up to date; every round trip passes it, with
the operation's name, to the store's :class:`Observer`. The observer never sees the session.
The OpenTelemetry observer (``restate_redis.ext.otel``) registers itself with
:func:`register` when the package is imported; without it a store observes nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

if TYPE_CHECKING:
    from redis.asyncio import Redis, RedisCluster

T = TypeVar("T")

ObjectKeyMode = Literal["plain", "hash", "omit"]
"""How spans carry the object key: as it is, as a hash, or not at all."""

Op = Literal["open", "get", "keys", "all", "commit", "release", "renew", "wait"]

# What the session is about to ask in this task's next round trip, when the op alone does not
# say: (Redis command, state key). A context variable so concurrent tasks each see their own.
ROUNDTRIP: ContextVar[tuple[str, str | None] | None] = ContextVar(
    "restate_redis_roundtrip", default=None
)


@dataclass(slots=True)
class SessionRecord:
    """One session as its observer sees it; the session keeps it current."""

    service: str
    key: str
    kind: Literal["object", "workflow"]
    shared: bool
    commit_id: str | None
    mode: str
    lease_wait: float = 0.0
    """Seconds spent waiting for the exclusive lease so far."""
    writes: tuple[int, int] = (0, 0)
    """(state keys set or cleared, encoded bytes set) of the commit under way."""
    replicated: bool = False
    """The commit goes out with a WAIT for replicas (``min_replicas``)."""


class Observer(Protocol):
    """Sees every round trip of the store's sessions."""

    def traced(
        self, op: Op, record: SessionRecord, call: Callable[[], Awaitable[T]]
    ) -> Awaitable[T]:
        """``call()``, observed (a span, metrics); ``call`` itself when nothing observes."""
        ...

    def record_retry(self, op: Op, record: SessionRecord) -> None:
        """A round trip is about to be tried again."""
        ...

    def record_lease_timeout(self, record: SessionRecord) -> None:
        """The session gave up waiting for the lease."""
        ...

    def invocation(
        self, headers: Callable[[], dict[str, str]]
    ) -> contextlib.AbstractContextManager[None]:
        """Within the block, round trips belong to the invocation whose headers these are."""
        ...


class NoObserver:
    """The observer of a store when none is plugged in: every call is passed through."""

    def traced(
        self, op: Op, record: SessionRecord, call: Callable[[], Awaitable[T]]
    ) -> Awaitable[T]:
        return call()

    def record_retry(self, op: Op, record: SessionRecord) -> None:
        pass

    def record_lease_timeout(self, record: SessionRecord) -> None:
        pass

    @contextlib.contextmanager
    def invocation(self, headers: Callable[[], dict[str, str]]) -> Iterator[None]:
        yield


ObserverFactory = Callable[..., Observer]
_factory: ObserverFactory | None = None


def register(factory: ObserverFactory) -> None:
    """Make ``factory(client, **options)`` build the observer of every store created after."""
    global _factory
    _factory = factory


def make(client: Redis | RedisCluster, **options: Any) -> Observer:
    """The observer for a new store: the registered one, else :class:`NoObserver`."""
    return _factory(client, **options) if _factory is not None else NoObserver()
