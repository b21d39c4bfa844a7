"""The session a handler uses: Restate's state API over the parts that do the work.

Reads come from the snapshot taken when the session opened (eager), from one HGET per key on
first use (lazy), or from a preloaded subset (:mod:`.view`); writes are buffered
(:mod:`.writes`) and applied by one server-side script when the session ends without an
exception (:mod:`.protocol`), under the object's lease (:mod:`.lease`).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from datetime import timedelta
from types import TracebackType
from typing import Any, TypeVar, overload

from ..backend.engine import Mode
from ..backend.replies import Replay
from ..errors import (
    InvalidNameError,
    InvalidOptionError,
    ReadOnlySessionError,
    ServerFeatureError,
    SessionClosedError,
    StateDecodeError,
    StateEncodeError,
    StateError,
    StateTypeError,
    ValueTooLargeError,
)
from ..observe import SessionRecord
from ..serde import Serde, convert
from . import protocol
from .lease import Lease
from .target import MISSING, Kind, SessionHost, StatePreload, Target
from .view import ReadView
from .writes import WriteBuffer, ttl_ms

T = TypeVar("T")


class Session:
    """The state of one object or workflow for the length of one ``async with`` block.

    Created by :meth:`RedisStateStore.object` and :meth:`RedisStateStore.workflow`.
    ``get`` and ``state_keys`` are awaited; ``set``, ``clear`` and ``clear_all`` are plain
    calls that buffer the change. Leaving the block normally commits every change atomically
    (or none); leaving it with an exception discards them.
    """

    def __init__(
        self,
        store: SessionHost,
        kind: Kind,
        service: str,
        key: str,
        *,
        shared: bool,
        state_preload: StatePreload,
        expire: float | None,
        commit_id: str | None,
        record_prior: bool = False,
        lease_token: str | None = None,
    ) -> None:
        self.store = store
        self.kind: Kind = kind
        self.service = service
        self.shared = bool(shared)
        self.mode: Mode
        if state_preload is True:
            self.mode = "eager"
        elif state_preload is False:
            self.mode = "lazy"
        elif isinstance(state_preload, list | tuple):
            self.mode = "preload"
        else:
            raise InvalidOptionError(
                f"state_preload must be True, False or a list of state keys, got {state_preload!r}"
            )
        if commit_id is not None and (not isinstance(commit_id, str) or not commit_id):
            raise InvalidNameError(f"commit_id must be a non-empty str, got {commit_id!r}")
        if lease_token is not None and (not isinstance(lease_token, str) or not lease_token):
            raise InvalidNameError(f"lease_token must be a non-empty str, got {lease_token!r}")
        self.record = SessionRecord(
            service,
            key,
            kind,
            self.shared,
            commit_id,
            self.mode,
            replicated=store.backend.replicated,
        )
        """What the store's observer (tracing, metrics) sees of this session."""
        # Every exclusive commit carries an id, so a retry after a lost reply is recognised:
        # one random draw per session, none when the caller names both (a Restate invocation).
        named = commit_id is not None and lease_token is not None
        nonce = "" if self.shared or named else secrets.token_hex(16)
        self._target = target = Target(
            self.record,
            store.keyspace.object_keys(service, key),
            token="" if self.shared else (lease_token or nonce),
            mode=self.mode,
            preload=(),
            run=kind == "workflow" and not self.shared,
            commit_id=commit_id,
            commit_tag=commit_id or nonce[:16],
            record_prior=record_prior,
            expire=expire,
        )
        target.backend = store.backend
        if self.mode == "preload":
            target.preload = tuple(target.check_name(n) for n in state_preload)  # type: ignore[union-attr]
        self.keys = target.keys
        self.commit_id = commit_id
        self.record_prior = record_prior
        self._lease = Lease(target)
        self._view = ReadView(self._target)
        self._writes = WriteBuffer()
        self._version = 0
        self._workflow_status: str | None = None
        self._meta_read = True  # False: a shared lazy session, which reads nothing at open
        self._purge = False
        self._open = False
        self._closed = False
        self.replayed = False
        """True when ``commit_id`` had already been committed: the session sees the state from
        before that commit, and its own commit is recognised and not applied again."""
        self.purged = False
        """After :meth:`purge`: True when the object had anything stored."""

    # -- what the session found when it opened ---------------------------------------------------

    @property
    def version(self) -> int:
        """The object's version when the session opened (commits since it was created)."""
        self._check_meta_read("version")
        return self._version

    @property
    def workflow_status(self) -> str | None:
        """For workflows: None (never run), "running" or "completed"."""
        self._check_meta_read("workflow_status")
        return self._workflow_status

    @property
    def lease_wait(self) -> float:
        """Seconds spent waiting for the exclusive lease."""
        return self.record.lease_wait

    @property
    def where(self) -> str:
        """The 'service'/'key' phrase error messages use for this session."""
        return self._target.where

    def _check_meta_read(self, what: str) -> None:
        if not self._meta_read:
            raise StateError(
                f"the {what} of {self.where} was not read: a shared lazy session on an object "
                f"makes no round trip when it opens (each get is one HGET); open it with "
                f"state_preload=True or a preload list to read it"
            )

    # -- the Restate API ---------------------------------------------------------------------

    def key(self) -> str:
        """The object key or workflow id."""
        return self.record.key

    @overload
    async def get(self, name: str, serde: Serde[T] | None = ..., type_hint: None = ...) -> Any: ...
    @overload
    async def get(
        self, name: str, serde: Serde[Any] | None = ..., *, type_hint: type[T]
    ) -> T | None: ...

    async def get(self, name: str, serde: Serde[Any] | None = None, type_hint: Any = None) -> Any:
        """The value of state key ``name``, or None when it does not exist.

        ``type_hint`` turns the decoded data into that type (int, dataclass, pydantic model,
        msgspec Struct, datetime, ``list[X]``...).
        """
        self._check_usable()
        name = self._target.check_name(name)
        written, raw = self._writes.known(name)
        if not written:
            raw = self._view.known(name)
            if raw is MISSING:
                raw = await self._view.fetch(name)
        if raw is None:
            return None
        serde = serde if serde is not None else self.store.serde
        try:
            data = serde.deserialize(raw)
        except Exception as exc:
            raise StateDecodeError(
                f"cannot decode {self._name(name)} with {type(serde).__name__}: {exc}"
            ) from exc
        if type_hint is None:
            return data
        try:
            return convert(data, type_hint)
        except (TypeError, ValueError) as exc:
            raise StateTypeError(f"{self._name(name)}: {exc}") from exc

    def set(
        self,
        name: str,
        value: Any,
        serde: Serde[Any] | None = None,
        *,
        ttl: float | timedelta | None = None,
    ) -> None:
        """Set state key ``name`` to ``value``; encoded now, so a bad value fails here.

        ``ttl`` (seconds or a timedelta): the key expires on its own this long after the
        commit (hash-field expiry: Redis 7.4+ or Valkey 9+, else
        :class:`~restate_redis.errors.ServerFeatureError`). Commits that do not set the key
        keep its expiry; a later ``set`` without ``ttl`` ends it.
        """
        self._check_writable()
        name = self._target.check_name(name)
        expires = None if ttl is None else self._ttl(name, ttl)
        serde = serde if serde is not None else self.store.serde
        try:
            buf = serde.serialize(value)
        except Exception as exc:
            raise StateEncodeError(
                f"cannot encode value for {self._name(name)} with {type(serde).__name__}: {exc}"
            ) from exc
        if not isinstance(buf, bytes | bytearray | memoryview):
            raise StateEncodeError(
                f"{type(serde).__name__}.serialize returned {type(buf).__name__}, not bytes, "
                f"for {self._name(name)}"
            )
        if type(buf) is not bytes:
            buf = bytes(buf)
        if len(buf) > self.store.max_value_bytes:
            raise ValueTooLargeError(
                f"value for {self._name(name)} is {len(buf)} bytes encoded, over "
                f"max_value_bytes={self.store.max_value_bytes}"
            )
        self._writes.put(name, buf, expires)

    def clear(self, name: str) -> None:
        """Delete state key ``name``."""
        self._check_writable()
        self._writes.delete(self._target.check_name(name))

    def clear_all(self) -> None:
        """Delete every state key of this object or workflow."""
        self._check_writable()
        self._writes.clear_all()

    async def state_keys(self) -> list[str]:
        """The sorted names of the state keys, this session's own writes included."""
        self._check_usable()
        stored = set() if self._writes.cleared_all else await self._view.names()
        return sorted(self._writes.applied_to(stored))

    # -- extras --------------------------------------------------------------------------------

    async def get_all(
        self, serde: Serde[Any] | None = None, type_hint: Any = None
    ) -> dict[str, Any]:
        """Every state key and its value (loads whatever is not loaded yet: one round trip up
        to 10,000 keys, then pages)."""
        self._check_usable()
        with self._view.holding():
            if not self._writes.cleared_all:
                await self._view.load_all()
            return {
                name: await self.get(name, serde, type_hint) for name in await self.state_keys()
            }

    @property
    def dirty(self) -> bool:
        """True when the session has buffered writes."""
        return self._writes.dirty

    def purge(self) -> None:
        """Remove the object entirely when the session ends: its state and its bookkeeping
        (version, workflow status, replay records), so its key can be used afresh."""
        self._check_writable()
        self._purge = True

    # -- lifecycle -------------------------------------------------------------------------------

    async def __aenter__(self) -> Session:
        if self._open or self._closed:
            raise SessionClosedError(f"a session on {self.where} can be entered only once")
        if self.shared:
            await self._open_session()
        else:
            try:
                await self._open_session()
            except BaseException:
                # Cancelled while the open was in flight (its reply is dropped, but the script
                # may run and take the lease), or failed after it took the lease: release with
                # this session's token, in a task of the store's that outlives this one, so the
                # next session does not wait out lease_ttl. An open the script refused took
                # nothing: no round trip then.
                if self._lease.maybe_taken:
                    self._lease.release_later()
                raise
        self._open = True
        return self

    async def _open_session(self) -> None:
        if self.shared and self.mode == "lazy" and self.kind == "object":
            # Nothing to lock and nothing to load: each read is one HGET, with no open before
            # it. (A workflow's shared session still opens, for its workflow_status.)
            self._meta_read = False
            return
        opened = await protocol.open_state(self._target, self._lease, self.store)
        self._version = opened.version
        self._workflow_status = opened.workflow_status
        self.replayed = opened.replay is not Replay.NONE
        self._view.load(opened, self._target.preload)
        if opened.mode == "eager":
            self.mode = "eager" if self.mode == "eager" or self.replayed else self.mode
        elif opened.mode != "preload":
            self.mode = "lazy"
        self.record.mode = self.mode
        if not self.shared:
            self._lease.start_renewal()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._open = False
        self._closed = True
        renewer = self._lease.stop_renewal()
        if renewer is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
        if self.shared:
            return
        if exc_type is not None:
            with contextlib.suppress(Exception):
                await self._lease.release()
            return
        if self._purge:
            self.purged = await protocol.purge(self._target, self._lease)
        elif self.dirty or (self.kind == "workflow" and not self.replayed):
            self._version = await protocol.commit(self._target, self._lease, self._writes)
        else:
            await self._lease.release()

    # -- checks ---------------------------------------------------------------------------------

    def _name(self, name: str) -> str:
        """The phrase error messages use for state key ``name`` of this session."""
        return f"{self.where} state key {name!r}"

    def _ttl(self, name: str, ttl: object) -> int:
        """``set(name, ..., ttl=ttl)``'s ttl in ms, once the server is known to take it."""
        ms = ttl_ms(ttl, self._name(name))
        missing = self.store.backend.field_expiry_missing()
        if missing is not None:
            raise ServerFeatureError(f"cannot give {self._name(name)} a ttl: {missing}")
        return ms

    def _check_usable(self) -> None:
        if not self._open:
            raise SessionClosedError(
                f"the session on {self.where} is not open: use it inside its 'async with' block"
            )

    def _check_writable(self) -> None:
        self._check_usable()
        if self.shared:
            raise ReadOnlySessionError(
                f"{self.where} is open in a shared session, which can only read; write from an "
                f"exclusive session"
            )

    def __repr__(self) -> str:
        kind = "shared" if self.shared else "exclusive"
        return f"<Session {self.kind} {self.service!r}/{self.key()!r} {kind} {self.mode}>"
