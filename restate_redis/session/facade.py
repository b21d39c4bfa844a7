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
import time
from datetime import timedelta
from types import TracebackType
from typing import Any, TypeVar, overload

from ..backend.engine import Mode
from ..backend.replies import Committed, Opened, Released, Replay, Status
from ..codecs import MAGIC, StoredBytes
from ..errors import (
    InvalidNameError,
    InvalidOptionError,
    LeaseTimeoutError,
    ReadOnlySessionError,
    ServerFeatureError,
    SessionClosedError,
    StateDecodeError,
    StateEncodeError,
    StateError,
    StateTypeError,
    ValueTooLargeError,
)
from ..keyspace import commit_tag
from ..observe import SessionRecord
from ..serde import Serde, convert
from . import protocol
from .cache import Snapshot
from .handoff import Grant, LocalLeases, Turn, Waiter
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
        lease_on_enter: bool = False,
        history: str = "",
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
            history=history,
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
        # An exclusive lazy session on an object opens on its first access, and its first
        # read rides on the open; a session that only writes never opens (its commit takes
        # the lease). Workflows, and lease_on_enter=True, open on entering the block.
        self._deferred = (
            self.mode == "lazy" and not self.shared and kind == "object" and not lease_on_enter
        )
        self._opened = False
        self._local: LocalLeases | None = None  # this store's line for the object, once in it
        # False: a shared lazy session, which reads nothing at open, or a session that has
        # not opened yet
        self._meta_read = not self._deferred
        self._purge = False
        self._open = False
        self._closed = False
        self.replayed = False
        """True when ``commit_id`` had already been committed: the session sees the state from
        before that commit, and its own commit is recognised and not applied again."""
        self.purged = False
        """After :meth:`purge`: True when the object had anything stored."""
        self.cached = False
        """True when the open found the store's snapshot of the state still current, and read
        no state from Redis (see the store's ``snapshot_cache_bytes``)."""

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
        if self._meta_read:
            return
        if self._deferred:
            raise StateError(
                f"the {what} of {self.where} is not known yet: a lazy session opens on its "
                f"first read (a get, state_keys or get_all); read first, or open it with "
                f"lease_on_enter=True to take the lease and read the bookkeeping on entry"
            )
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

        The store's codecs (compression, encryption) decode the stored bytes before ``serde``
        (or the store's serde) reads them.

        ``type_hint`` turns the decoded data into that type (int, dataclass, pydantic model,
        msgspec Struct, datetime, ``list[X]``...).
        """
        self._check_usable()
        name = self._target.check_name(name)
        written, raw = self._writes.known(name)
        if not written:
            raw = self._view.known(name)
            if raw is MISSING and not self._opened and self._deferred:
                await self._open_session((name,))  # the read rides on the open
                raw = self._view.known(name)
            if raw is MISSING:
                raw = await self._view.fetch(name)
        if raw is None:
            return None
        serde = serde if serde is not None else self.store.serde
        codec = self.store.codec
        if (raw[:1] == MAGIC or codec.strict) and not isinstance(serde, StoredBytes):
            raw = codec.decode(raw, self.service, self.record.key, name)
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
        """Set state key ``name`` to ``value``; encoded now (by ``serde`` or the store's, then
        the store's codecs), so a bad value fails here. ``max_value_bytes`` applies to the
        bytes stored.

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
        codec = self.store.codec
        if (codec.encodes or buf[:1] == MAGIC) and not isinstance(serde, StoredBytes):
            buf = codec.encode(buf, self.service, self.record.key, name)
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
        if self._writes.cleared_all:
            return sorted(self._writes.applied_to(set()))
        if not self._opened and self._deferred:
            await self._open_session()
        return sorted(self._writes.applied_to(await self._view.names()))

    # -- extras --------------------------------------------------------------------------------

    async def get_all(
        self, serde: Serde[Any] | None = None, type_hint: Any = None
    ) -> dict[str, Any]:
        """Every state key and its value (loads whatever is not loaded yet: one round trip up
        to 10,000 keys, then pages)."""
        self._check_usable()
        with self._view.holding():
            if not self._writes.cleared_all:
                if not self._opened and self._deferred:
                    await self._open_session()
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
        if not self._deferred:
            await self._open_session()
        self._open = True
        return self

    async def _open_session(self, names: tuple[str, ...] = ()) -> None:
        """Open (``names``: the state keys a lazy session reads with its open)."""
        if self.shared and self.mode == "lazy" and self.kind == "object":
            # Nothing to lock and nothing to load: each read is one HGET, with no open before
            # it. (A workflow's shared session still opens, for its workflow_status.)
            self._meta_read = False
            return
        target, lease = self._target, self._lease
        try:
            if await self._local_turn():
                return  # the lease and the state were handed over by this store's last holder
            opened, snapshot = await protocol.open_state(target, lease, self.store, names)
            self._take(opened, snapshot, names)
        except BaseException:
            self._leave_local()
            # Cancelled while the open was in flight (its reply is dropped, but the script
            # may run and take the lease), or failed after it took the lease: release with
            # this session's token, in a task of the backend's that outlives this one, so the
            # next session does not wait out lease_ttl. An open the script refused took
            # nothing: no round trip then.
            if not self.shared and lease.maybe_taken:
                lease.release_later()
            raise
        if not self.shared:
            lease.start_renewal()

    async def _local_turn(self) -> bool:
        """Wait for this object's turn among this store's sessions (see :mod:`.handoff`);
        True when the lease came handed over with the state, so nothing is left to open."""
        if self.shared or self.kind != "object" or self._local is not None:
            return False
        local, target = self.store.local_leases, self._target
        took = local.take(target.keys.state, target.token)
        if took is None:
            return False  # a retry of the holder's work: it re-enters the lease in Redis
        self._local = local
        if took:
            return False  # no other session of this store holds the object
        # Wait in line, but not past the lease's lifetime: a holder that stopped renewing
        # (its lease expired) must not keep this session waiting; it then asks Redis.
        started = time.monotonic()
        timeout = self.store.acquire_timeout
        bound = min(timeout, target.backend.lease_ttl)
        try:
            turn = await asyncio.wait_for(
                local.enter(target.keys.state, target.token, self._lease.release_later), bound
            )
        except TimeoutError:
            self._local = None
            if bound < timeout:
                return False
            self.store.telemetry.record_lease_timeout(self.record)
            raise LeaseTimeoutError(
                f"could not acquire the lease of {self.where} within "
                f"acquire_timeout={timeout:g}s: another session of this store holds it"
            ) from None
        except BaseException:
            self._local = None
            raise
        self.record.lease_wait = time.monotonic() - started
        if isinstance(turn, Grant):
            self._lease.maybe_taken = True  # the lease is this session's token's now
            # Taken without an open, unless the open could find this session a replay (its
            # commit id the last commit's): then it opens, and the lease is its already.
            snapshot = turn.snapshot
            if snapshot is not None and (
                target.commit_id is None or commit_tag(target.commit_id) != snapshot.commit_id
            ):
                self._version, self._workflow_status = turn.version, None
                self._opened = self._meta_read = self.cached = True
                self._view.load_snapshot(snapshot.data, snapshot.expires_at)
                self._lease.start_renewal()
                return True
        elif turn == Turn.YIELD:  # other processes waited: their turn first
            backend = self._target.backend
            await backend.wait(self._target, min(backend.wait_slice, self.store.acquire_timeout))
        return False

    def _leave_local(self, waiter: Waiter | None = None, signalled: bool = False) -> None:
        """Give this object's local turn to the next session of this store (it opens)."""
        if self._local is not None:
            self._local.leave(self._target.keys.state, waiter, signalled)
            self._local = None

    def _take(self, opened: Opened, snapshot: Snapshot | None, names: tuple[str, ...]) -> None:
        """Take what the open found."""
        target = self._target
        self._opened = self._meta_read = True
        self._version = opened.version
        self._workflow_status = opened.workflow_status
        self.replayed = opened.replay is not Replay.NONE
        if snapshot is not None:  # the cached snapshot is still the state
            self._view.load_snapshot(snapshot.data, opened.expires_at)
            self.cached = True
        else:
            self._view.load(opened, names or target.preload)
            snapshots = self.store.snapshots
            if opened.mode == "eager" and not self.replayed and snapshots is not None:
                snapshots.put(
                    target.keys.state,
                    opened.version,
                    opened.commit_id,
                    self._view.cache,
                    opened.expires_at,
                )
        if snapshot is not None or opened.mode == "eager":
            self.mode = "eager" if self.mode == "eager" or self.replayed else self.mode
        elif opened.mode != "preload":
            self.mode = "lazy"
        self.record.mode = self.mode

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._open = False
        self._closed = True
        lease = self._lease
        renewer = lease.stop_renewal()
        if renewer is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
        if self.shared:
            return
        if exc_type is not None:  # nothing is written; the lease is given back before the error
            try:
                if self._opened:  # goes on, so a retry of the work finds the object free
                    with contextlib.suppress(Exception):
                        await lease.release()
            finally:
                self._leave_local()
            return
        if not self._opened:
            if not self.dirty and not self._purge:
                return  # never opened, nothing written: no round trip at all
            if self._purge:
                await self._open_session()  # a purge runs under the lease
            else:  # a session that only wrote: its commit takes the lease itself
                await self._local_turn()
        try:
            await self._finish()
        except BaseException:
            self._leave_local()
            raise

    async def _finish(self) -> None:
        """Commit, purge or release; hand the lease to the next session of this store that
        waits for the object, when there is one (see :mod:`.handoff`)."""
        lease, target = self._lease, self._target
        key = target.keys.state
        waiter = self._local.next_waiter(key) if self._local is not None else None
        handoff = waiter.token if waiter is not None else ""
        signalled = False  # the release woke a session waiting in Redis
        if self._purge:
            self.purged = await protocol.purge(target, lease)
            self._forget_snapshot()
            handed: Grant | None = None
        elif self.dirty or (self.kind == "workflow" and not self.replayed):
            blind = not self._opened
            committed = await protocol.commit(
                target, lease, self._writes, self.store, blind=blind, handoff=handoff
            )
            self._version = committed.version
            self._meta_read = True
            if committed.status is Status.ALREADY_APPLIED:
                self.replayed = True
            snapshot = self._keep_snapshot(committed)
            signalled = committed.signalled
            ok = committed.status is Status.OK
            handed = Grant(committed.version, snapshot) if ok and waiter is not None else None
        elif waiter is not None:  # wrote nothing: the lease goes to the next session here
            snapshots = self.store.snapshots
            current = snapshots.get(key) if snapshots is not None else None
            if current is not None and current.version != self._version:
                current = None
            handed = Grant(self._version, current) if await lease.release(handoff) else None
        elif self._local is not None and self._local.waiting(key):
            # wrote nothing, and the hand-offs in a row reached their limit: whether the
            # release woke a session of another process decides who goes next
            signalled = await lease.release() is Released.SIGNALLED
            handed = None
        else:  # wrote nothing: the caller does not wait for the reply
            pending = lease.release_soon()
            if pending is not None and self._local is not None:
                # The next session of this store on the object opens once the release
                # landed (pooled connections could send its open first).
                local, self._local = self._local, None
                pending.add_done_callback(lambda _: local.leave(key))
            handed = None
        if handed is not None and waiter is not None and self._local is not None:
            self._local.handed(key, waiter, handed)
            self._local = None
        else:
            self._leave_local(waiter, signalled)

    def _keep_snapshot(self, committed: Committed) -> Snapshot | None:
        """After a commit: the state it left, for the next session's open to name."""
        snapshots, view, writes = self.store.snapshots, self._view, self._writes
        if snapshots is None:
            return None
        key = self._target.keys.state
        if (
            committed.status is not Status.OK
            or not view.complete
            or view.source != key
            or self.replayed
            or view.expires_at is not None  # keys with an expiry: when the next one goes, the
            or view.volatile  # commit's reply does not say, so its state is not kept
            or writes.ttls
        ):
            snapshots.drop(key)
            return None
        data = (
            {} if writes.cleared_all else {n: v for n, v in view.cache.items() if v is not MISSING}
        )
        for name, buf in writes.writes.items():
            if buf is None:
                data.pop(name, None)
            else:
                data[name] = buf
        tag = commit_tag(self._target.commit_tag)
        return snapshots.put(key, committed.version, tag, data)

    def _forget_snapshot(self) -> None:
        if self.store.snapshots is not None:
            self.store.snapshots.drop(self._target.keys.state)

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
