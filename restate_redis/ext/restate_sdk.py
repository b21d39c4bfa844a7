"""Keep the K/V state of restate-sdk handlers in Redis: ``@store.restate_state()``.

The decorator goes under ``@obj.handler()`` (or ``@wf.main()``); the handler's code does not
change. Its context becomes a proxy whose ``get / set / clear / clear_all / state_keys`` use a
:class:`~restate_redis.session.Session` on the same service and key, while every other
attribute (``run``, ``sleep``, calls, promises, ``key()``, ``request()``...) is the SDK's own.
``store.restate_state()(service)`` switches every handler of a ``VirtualObject`` or
``Workflow`` defined so far.

Exactly once without a journal entry per session: each exclusive session uses the invocation
id as its commit id and records, with its commit, the prior values of what it changed. A
retry of an invocation whose commit already applied (its connection was cut after the commit,
it failed after returning...) then reads the state as it was before that commit, computes the
same result, and its repeated commit is recognised and skipped. Restate starts the next
invocation on a key only after this one has completed, so one such record per object is
enough.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar, cast, overload

from ..durations import Duration, seconds
from ..errors import (
    InvalidNameError,
    ReadOnlySessionError,
    ServerFeatureError,
    StateDecodeError,
    StateEncodeError,
    WorkflowCompletedError,
    WrongTypeError,
)
from ..session import StatePreload

try:
    from restate.exceptions import TerminalError
    from restate.handler import RESTATE_UNIQUE_HANDLER_SYMBOL
    from restate.serde import DefaultSerde as _SdkDefaultSerde
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "restate_redis.ext.restate_sdk needs the Restate Python SDK: "
        "pip install 'restate-redis[restate]'"
    ) from exc

if TYPE_CHECKING:
    from ..serde import Serde
    from ..session import Session
    from ..store import RedisStateStore

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
S = TypeVar("S")

__all__ = ["LEASE_TOKEN_PREFIX", "RestateState", "RestateStateContext"]

LEASE_TOKEN_PREFIX = "restate:"
"""Lease tokens of exclusive handlers are this prefix and the invocation id, so that a retry of
an invocation re-enters the lease its killed attempt still holds instead of waiting it out."""

# Errors a retry cannot cure: they end the invocation (Restate would retry them forever).
# Everything else (Redis unreachable, lease timeout or loss, unconfirmed commit) is retried.
_TERMINAL: tuple[tuple[type[Exception], int], ...] = (
    (ReadOnlySessionError, 500),
    (WorkflowCompletedError, 409),
    (InvalidNameError, 500),
    (StateEncodeError, 500),  # ValueTooLargeError included
    (StateDecodeError, 500),  # StateTypeError included
    (WrongTypeError, 500),
    (ServerFeatureError, 500),  # a state key's ttl on a server without field expiry
)

_MARK = "__restate_redis_state__"


@dataclass(frozen=True, slots=True)
class _Options:
    state_preload: StatePreload
    workflow_retention: float | None
    ttl: float | None


@dataclass(frozen=True, slots=True)
class _Target:
    """What one invocation's session is about, read from the SDK's handler description."""

    of: Any  # the SDK's Handler
    service: str
    handler: str
    workflow: bool
    shared: bool
    retention: float | None  # the handler's own workflow_retention, if any


class RestateState:
    """The decorator returned by :meth:`RedisStateStore.restate_state`.

    Apply it to an ``async def`` handler (under the SDK's ``@obj.handler()``), or call it on a
    ``restate.VirtualObject`` / ``restate.Workflow`` to switch all of its handlers defined so
    far (do that before serving).
    """

    def __init__(
        self,
        store: RedisStateStore,
        *,
        state_preload: StatePreload = True,
        workflow_retention: Duration | None = None,
        ttl: Duration | None = None,
    ) -> None:
        if state_preload is not True and state_preload is not False:
            if not isinstance(state_preload, list | tuple) or not all(
                isinstance(n, str) for n in state_preload
            ):
                raise TypeError(
                    "state_preload must be True (eager), False (lazy) or a list of state keys, "
                    f"got {state_preload!r}"
                )
            state_preload = tuple(state_preload)
        self.store = store
        self.options = _Options(
            state_preload=state_preload,
            workflow_retention=None
            if workflow_retention is None
            else seconds(workflow_retention, "workflow_retention"),
            ttl=None if ttl is None else seconds(ttl, "ttl"),
        )

    @overload
    def __call__(self, target: F) -> F: ...
    @overload
    def __call__(self, target: S) -> S: ...

    def __call__(self, target: Any) -> Any:
        handlers = getattr(target, "handlers", None)
        if isinstance(handlers, dict) and hasattr(target, "service_tag"):
            return self._switch_service(target, handlers)
        registered = getattr(target, "__dict__", {}).get(RESTATE_UNIQUE_HANDLER_SYMBOL)
        if registered is not None:
            # Put above @obj.handler() instead of under it: switch the registered handler.
            registered.fn = self._wrap(registered.fn)
            return target
        if not inspect.iscoroutinefunction(target):
            raise TypeError(
                "restate_state() decorates an 'async def' handler or switches a "
                f"restate.VirtualObject / restate.Workflow, got {target!r}"
            )
        return self._wrap(target)

    def _switch_service(self, service: Any, handlers: dict[str, Any]) -> Any:
        if service.service_tag.kind not in ("object", "workflow"):
            raise TypeError(
                f"service {service.service_tag.name!r} is a plain Service, which has no K/V "
                f"state; restate_state() applies to VirtualObject and Workflow"
            )
        for handler in handlers.values():
            handler.fn = self._wrap(handler.fn)
        return service

    def _wrap(self, fn: F) -> F:
        if getattr(fn, _MARK, None) is not None:
            return fn  # already switched (decorator and service-wide switch together)
        store, options = self.store, self.options

        @functools.wraps(fn)
        async def handler(ctx: Any, *args: Any, **kwargs: Any) -> Any:
            target = _target_of(ctx)
            try:
                session = _open(store, options, target, ctx)
                # state spans join the trace Restate sends with the attempt (a no-op when
                # tracing is off)
                with store.telemetry.invocation(functools.partial(_attempt_headers, ctx)):
                    async with session:
                        return await fn(RestateStateContext(ctx, session), *args, **kwargs)
            except _TERMINAL_TYPES as exc:
                code = next(c for t, c in _TERMINAL if isinstance(exc, t))
                if isinstance(exc, ReadOnlySessionError):
                    message = (
                        f"shared handler {target.service}/{target.handler} tried to change the "
                        f"state of key {ctx.key()!r}: shared handlers can only read state; "
                        f"change it from an exclusive handler"
                    )
                else:
                    kind = "shared" if target.shared else "exclusive"
                    message = f"{kind} handler {target.service}/{target.handler}: {exc}"
                raise TerminalError(message, status_code=code) from exc

        setattr(handler, _MARK, options)
        return cast(F, handler)

    def __repr__(self) -> str:
        o = self.options
        return f"<RestateState preload={o.state_preload!r} retention={o.workflow_retention!r}>"


_TERMINAL_TYPES = tuple(t for t, _ in _TERMINAL)


_targets: dict[int, _Target] = {}  # id(SDK handler) -> what it is about; handlers live forever


def _target_of(ctx: Any) -> _Target:
    handler = getattr(ctx, "handler", None)
    target = _targets.get(id(handler))
    if target is not None and target.of is handler:
        return target
    tag = getattr(handler, "service_tag", None)
    if handler is None or tag is None:
        raise TypeError(
            f"restate_state() handlers need the context restate-sdk passes them, got {ctx!r}"
        )
    if tag.kind not in ("object", "workflow"):
        raise TerminalError(
            f"handler {tag.name}/{handler.name} belongs to a plain Service, which has no K/V "
            f"state; restate_state() applies to VirtualObject and Workflow handlers"
        )
    retention = handler.workflow_retention
    if isinstance(retention, timedelta):
        retention = retention.total_seconds() or None
    target = _Target(
        of=handler,
        service=tag.name,
        handler=handler.name,
        workflow=tag.kind == "workflow",
        # A workflow's handlers are its run ("workflow") and shared ones.
        shared=handler.kind == "shared" or (tag.kind == "workflow" and handler.kind != "workflow"),
        retention=retention,
    )
    _targets[id(handler)] = target
    return target


def _attempt_headers(ctx: Any) -> Any:
    headers = getattr(ctx, "attempt_headers", None)  # ServerInvocationContext: no Request built
    return headers if headers is not None else ctx.request().attempt_headers


def _invocation_id(ctx: Any) -> str:
    invocation = getattr(ctx, "invocation", None)  # ServerInvocationContext: skip building
    if invocation is not None:  # a whole Request (headers copied) for one string
        return str(invocation.invocation_id)
    return str(ctx.request().id)


def _open(store: RedisStateStore, options: _Options, target: _Target, ctx: Any) -> Session:
    key = ctx.key()
    commit_id = None if target.shared else _invocation_id(ctx)
    # Restate runs one attempt of an invocation at a time; a retry whose previous attempt was
    # killed mid-session takes its lease over at once instead of waiting for lease_ttl.
    lease_token = None if commit_id is None else LEASE_TOKEN_PREFIX + commit_id
    preload: StatePreload = (
        list(options.state_preload)
        if isinstance(options.state_preload, tuple)
        else options.state_preload
    )
    if target.workflow:
        retention = options.workflow_retention or target.retention
        session = store.workflow(
            target.service,
            key,
            shared=target.shared,
            state_preload=preload,
            retention=retention,
            commit_id=commit_id,
            lease_token=lease_token,
        )
    else:
        session = store.object(
            target.service,
            key,
            shared=target.shared,
            state_preload=preload,
            ttl=options.ttl,
            commit_id=commit_id,
            lease_token=lease_token,
        )
    return session


def _store_serde(serde: Any, type_hint: Any) -> tuple[Serde[Any] | None, Any]:
    """The SDK's default serde means "the store's serde"; any other serde is used as given."""
    if serde is None:
        return None, type_hint
    if isinstance(serde, _SdkDefaultSerde):
        return None, type_hint if type_hint is not None else serde.type_hint
    return cast("Serde[Any]", serde), type_hint


class RestateStateContext:
    """The context a ``restate_state()`` handler receives.

    ``get``, ``set``, ``clear``, ``clear_all`` and ``state_keys`` take the SDK's signatures
    and go to Redis; everything else is the SDK context's own. ``session`` is the underlying
    :class:`~restate_redis.session.Session`.
    """

    __slots__ = ("_ctx", "session")

    def __init__(self, ctx: Any, session: Session) -> None:
        self._ctx = ctx
        self.session = session

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)

    async def get(
        self,
        name: str,
        serde: Any = None,
        type_hint: Any = None,
        entry_name: str | None = None,
    ) -> Any:
        """The value of state key ``name``, or None."""
        s, hint = _store_serde(serde, type_hint)
        return await self.session.get(name, s, hint)

    def set(
        self,
        name: str,
        value: Any,
        serde: Any = None,
        entry_name: str | None = None,
        *,
        ttl: float | timedelta | None = None,
    ) -> None:
        """Set state key ``name``; committed when the handler returns. ``ttl`` (seconds or a
        timedelta, not in the SDK's own ``set``): the key expires on its own this long after
        the commit (Redis 7.4+, Valkey 9+); a later ``set`` without it ends the expiry."""
        s, _ = _store_serde(serde, None)
        self.session.set(name, value, s, ttl=ttl)

    def clear(self, name: str, entry_name: str | None = None) -> None:
        """Delete state key ``name``."""
        self.session.clear(name)

    def clear_all(self, entry_name: str | None = None) -> None:
        """Delete every state key."""
        self.session.clear_all()

    async def state_keys(self, entry_name: str | None = None) -> list[str]:
        """The sorted state key names."""
        return await self.session.state_keys()

    def key(self) -> str:
        """The object key or workflow id."""
        return self.session.key()

    def __repr__(self) -> str:
        return f"<RestateStateContext {self.session!r}>"
