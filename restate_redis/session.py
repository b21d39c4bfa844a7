"""One invocation's view of an object's or workflow's state.

Reads come from the snapshot taken when the session opened (eager), from one HGET per key on
first use (lazy), or from a preloaded subset; writes are buffered and applied by one
server-side script when the session ends without an exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Literal, Protocol, TypeVar, overload

from redis.exceptions import ResponseError

from .backend import replies
from .backend.replies import Replay, Status
from .backend.scripts import Scripts
from .backend.wire import Wire
from .errors import (
    CommitError,
    CorruptStateError,
    InvalidNameError,
    InvalidOptionError,
    LeaseLostError,
    LeaseTimeoutError,
    ReadOnlySessionError,
    SessionClosedError,
    StateDecodeError,
    StateEncodeError,
    StateError,
    StateTypeError,
    ValueTooLargeError,
    WorkflowCompletedError,
    WrongTypeError,
    where,
)
from .keyspace import EMPTY_GRACE_SECONDS, Keyspace, ObjectKeys
from .observe import ROUNDTRIP, Observer, Op, SessionRecord
from .serde import Serde, convert

T = TypeVar("T")
StatePreload = bool | list[str] | tuple[str, ...]


class SessionHost(Protocol):
    """What a session needs of its store: the options, the command path and the observer
    (:class:`~restate_redis.RedisStateStore` is one; the session never imports it)."""

    client: Any
    keyspace: Keyspace
    serde: Serde[Any]
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

    def roundtrip(self, op: Op, session: Session, call: Callable[[], Awaitable[T]]) -> Awaitable[T]:
        """Every round trip of the session passes here (retries, tracing)."""
        ...

    def run_commit(self, keys: list[str], args: list[Any], where: str) -> Awaitable[Any]:
        """Run commit.lua once (with WAIT for ``min_replicas``)."""
        ...

    def release_later(self, keys: ObjectKeys, token: str) -> None:
        """Release the lease ``token`` may hold, in a task that outlives the session."""
        ...


Kind = Literal["object", "workflow"]
Mode = Literal["eager", "lazy", "preload"]

log = logging.getLogger("restate_redis")

_MISSING: Any = object()  # cached "this key does not exist"
SCAN_WHOLE = 10_000  # state_keys() / get_all() read a state of up to this many keys at once,
SCAN_PAGE = 1_000  # and a larger one in HSCAN pages of about this many


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
        self._key = key
        self.shared = bool(shared)
        self.mode: Mode
        self._preload: tuple[str, ...] = ()
        if state_preload is True:
            self.mode = "eager"
        elif state_preload is False:
            self.mode = "lazy"
        elif isinstance(state_preload, list | tuple):
            self._preload = tuple(self._check_name(n) for n in state_preload)
            self.mode = "preload"
        else:
            raise InvalidOptionError(
                f"state_preload must be True, False or a list of state keys, got {state_preload!r}"
            )
        if commit_id is not None and (not isinstance(commit_id, str) or not commit_id):
            raise InvalidNameError(f"commit_id must be a non-empty str, got {commit_id!r}")
        self.record = SessionRecord(
            service, key, kind, self.shared, commit_id, self.mode, replicated=store.min_replicas > 0
        )
        """What the store's observer (tracing, metrics) sees of this session."""
        self.commit_id = commit_id
        # Every exclusive commit carries an id, so a retry after a lost reply is recognised.
        # one random draw per session, none when the caller names both (a Restate invocation)
        named = commit_id is not None and lease_token is not None
        nonce = "" if self.shared or named else secrets.token_hex(16)
        self._commit_id = commit_id or nonce[:16]
        self.record_prior = record_prior
        self._expire = expire
        self.keys = store.keyspace.object_keys(service, key)
        self._version = 0
        self._workflow_status: str | None = None
        self._meta_read = True  # False: a shared lazy session, which reads nothing at open
        self.replayed = False
        """True when ``commit_id`` had already been committed: the session sees the state from
        before that commit, and its own commit is recognised and not applied again."""
        self.lease_wait = 0.0
        """Seconds spent waiting for the exclusive lease."""
        self.purged = False
        """After :meth:`purge`: True when the object had anything stored."""
        if lease_token is not None and (not isinstance(lease_token, str) or not lease_token):
            raise InvalidNameError(f"lease_token must be a non-empty str, got {lease_token!r}")
        self._token = "" if self.shared else (lease_token or nonce)
        self._cache: dict[str, Any] = {}  # state key -> stored bytes, or _MISSING
        self._complete = False  # _cache holds every stored key
        self._stored_keys: set[str] | None = None  # lazy: the stored field names, once read
        # A replay too large to load: the prior values of the keys the replayed commit
        # changed (over the state), or the whole prior state read from the old key.
        self._overlay: dict[str, Any] = {}
        self._source = self.keys.state  # the hash lazy reads go to
        self._purge = False
        self._writes: dict[str, bytes | None] = {}  # None: clear
        self._cleared_all = False
        self._open = False
        self._closed = False
        self._lease_lost = False
        self._renewer: asyncio.Task[None] | None = None
        self._renew_timer: asyncio.TimerHandle | None = None

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

    def _check_meta_read(self, what: str) -> None:
        if not self._meta_read:
            raise StateError(
                f"the {what} of {where(self.service, self._key)} was not read: a shared lazy "
                f"session on an object makes no round trip when it opens (each get is one "
                f"HGET); open it with state_preload=True or a preload list to read it"
            )

    # -- the Restate API ---------------------------------------------------------------------

    def key(self) -> str:
        """The object key or workflow id."""
        return self._key

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
        name = self._check_name(name)
        raw = self._known(name)
        if raw is _MISSING:
            raw = await self._fetch(name)
        if raw is None:
            return None
        serde = serde if serde is not None else self.store.serde
        try:
            data = serde.deserialize(raw)
        except Exception as exc:
            raise StateDecodeError(
                f"cannot decode {where(self.service, self._key, name)} "
                f"with {type(serde).__name__}: {exc}"
            ) from exc
        if type_hint is None:
            return data
        try:
            return convert(data, type_hint)
        except (TypeError, ValueError) as exc:
            raise StateTypeError(f"{where(self.service, self._key, name)}: {exc}") from exc

    def set(self, name: str, value: Any, serde: Serde[Any] | None = None) -> None:
        """Set state key ``name`` to ``value``; encoded now, so a bad value fails here."""
        self._check_writable()
        name = self._check_name(name)
        serde = serde if serde is not None else self.store.serde
        try:
            buf = serde.serialize(value)
        except Exception as exc:
            raise StateEncodeError(
                f"cannot encode value for {where(self.service, self._key, name)} "
                f"with {type(serde).__name__}: {exc}"
            ) from exc
        if not isinstance(buf, bytes | bytearray | memoryview):
            raise StateEncodeError(
                f"{type(serde).__name__}.serialize returned {type(buf).__name__}, not bytes, "
                f"for {where(self.service, self._key, name)}"
            )
        buf = bytes(buf)
        if len(buf) > self.store.max_value_bytes:
            raise ValueTooLargeError(
                f"value for {where(self.service, self._key, name)} is {len(buf)} bytes "
                f"encoded, over max_value_bytes={self.store.max_value_bytes}"
            )
        self._writes[name] = buf

    def clear(self, name: str) -> None:
        """Delete state key ``name``."""
        self._check_writable()
        self._writes[self._check_name(name)] = None

    def clear_all(self) -> None:
        """Delete every state key of this object or workflow."""
        self._check_writable()
        self._writes.clear()
        self._cleared_all = True

    async def state_keys(self) -> list[str]:
        """The sorted names of the state keys, this session's own writes included."""
        self._check_usable()
        if self._cleared_all:
            stored: set[str] = set()
        elif self._complete:
            stored = {k for k, v in self._cache.items() if v is not _MISSING}
        else:
            if self._stored_keys is None:
                fields = await self._scan("keys", values=False)
                self._stored_keys = {self._field(f) for f in fields}
                for name, raw in self._overlay.items():
                    if raw is _MISSING:
                        self._stored_keys.discard(name)
                    else:
                        self._stored_keys.add(name)
            stored = set(self._stored_keys)
        for name, buf in self._writes.items():
            if buf is None:
                stored.discard(name)
            else:
                stored.add(name)
        return sorted(stored)

    # -- extras --------------------------------------------------------------------------------

    async def get_all(
        self, serde: Serde[Any] | None = None, type_hint: Any = None
    ) -> dict[str, Any]:
        """Every state key and its value (loads whatever is not loaded yet: one round trip up
        to ``SCAN_WHOLE`` keys, then pages)."""
        self._check_usable()
        if not self._complete and not self._cleared_all:
            data = await self._scan("all", values=True)
            pairs = iter(data)
            for f, v in zip(pairs, pairs, strict=True):
                self._cache.setdefault(self._field(f), v)
            self._complete = True
        return {name: await self.get(name, serde, type_hint) for name in await self.state_keys()}

    @property
    def dirty(self) -> bool:
        """True when the session has buffered writes."""
        return bool(self._writes) or self._cleared_all

    # -- lifecycle -------------------------------------------------------------------------------

    async def __aenter__(self) -> Session:
        if self._open or self._closed:
            raise SessionClosedError(
                f"a session on {where(self.service, self._key)} can be entered only once"
            )
        await self._open_session()
        self._open = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._open = False
        self._closed = True
        if self._renew_timer is not None:
            self._renew_timer.cancel()
            self._renew_timer = None
        if self._renewer is not None:
            await self._stop_renewer()
        if self.shared:
            return
        if exc_type is not None:
            with contextlib.suppress(Exception):
                await self._release()
            return
        if self._purge:
            await self._run_purge()
        elif self.dirty or (self.kind == "workflow" and not self.replayed):
            await self._commit()
        else:
            await self._release()

    async def _open_session(self) -> None:
        if self.shared:
            await self._open_and_load()
            return
        try:
            await self._open_and_load()
        except BaseException:
            # Cancelled while the open was in flight (its reply is dropped, but the script may
            # run and take the lease), or failed after it took the lease: release with this
            # session's token, in a task of the store's that outlives this one, so the next
            # session does not wait out lease_ttl. Harmless when the lease was never taken.
            self.store.release_later(self.keys, self._token)
            raise

    async def _open_and_load(self) -> None:
        store = self.store
        if self.shared and self.mode == "lazy" and self.kind == "object":
            # Nothing to lock and nothing to load: each read is one HGET, with no open before
            # it. (A workflow's shared session still opens, for its workflow_status.)
            self._meta_read = False
            return
        run = "1" if self.kind == "workflow" and not self.shared else "0"
        args: list[Any] = [
            self._token,
            store.lease_ttl_ms,
            self.mode,
            store.eager_state_size_limit,
            run,
            self.commit_id or "",
            store.eager_state_field_limit,
            *self._preload,
        ]
        keys = [self.keys.state, self.keys.meta, self.keys.lease, self.keys.prev, self.keys.old]
        started = time.monotonic()
        deadline = started + store.acquire_timeout
        while True:
            reply = await self._call(
                "open", lambda: store.wire.script(store.scripts.open, keys, args)
            )
            refused = replies.refusal(reply)
            if refused is None:
                break
            if refused.status is not Status.BUSY:
                raise self._refused(refused)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                store.telemetry.record_lease_timeout(self.record)
                raise LeaseTimeoutError(
                    f"could not acquire the lease of {where(self.service, self._key)} "
                    f"within acquire_timeout={store.acquire_timeout:g}s: another session holds it"
                )
            wait = max(0.001, min(remaining, store.wait_slice, refused.pttl / 1000 + 0.001))
            await self._call("wait", lambda w=wait: store.client.blpop([self.keys.wake], timeout=w))
            self.lease_wait = time.monotonic() - started  # so far, for the next open's span
            self.record.lease_wait = self.lease_wait
        self.lease_wait = self.record.lease_wait = time.monotonic() - started
        opened = replies.Opened.parse(reply)
        self._version = opened.version
        self._workflow_status = opened.workflow_status
        loaded = opened.mode
        self.replayed = opened.replay is not Replay.NONE
        data = opened.data
        if opened.replay is Replay.OVERLAY:  # prior values of what it changed, over the state
            for i in range(0, len(data), 2):
                raw = data[i + 1]
                self._overlay[self._field(data[i])] = raw[1:] if raw[:1] == b"+" else _MISSING
            self._cache.update(self._overlay)
        elif opened.replay is Replay.OLD:  # the whole prior state, renamed aside by a clear_all
            self._source = self.keys.old
        if loaded == "eager":
            self.mode = "eager" if self.mode == "eager" or self.replayed else self.mode
            pairs = iter(data)
            try:
                self._cache = {f.decode(): v for f, v in zip(pairs, pairs, strict=True)}
            except (AttributeError, UnicodeDecodeError):  # str replies, or a non-UTF-8 name
                self._cache = {self._field(data[i]): data[i + 1] for i in range(0, len(data), 2)}
            self._complete = True
        elif loaded == "preload":
            self._cache = {
                n: _MISSING if v is None else v for n, v in zip(self._preload, data, strict=True)
            }
        else:
            self.mode = "lazy"
        self.record.mode = self.mode
        if not self.shared:
            # A timer, not a task: most sessions end before the first renewal is due, and
            # cancelling a timer costs no event loop turn (a task per session cost ~40 us).
            loop = asyncio.get_running_loop()
            self._renew_timer = loop.call_later(store.lease_ttl / 3, self._start_renewer)

    def _known(self, name: str) -> Any:
        """The stored bytes or None when known without a round trip, else _MISSING."""
        if name in self._writes:
            return self._writes[name]
        if self._cleared_all:
            return None
        cached = self._cache.get(name, _MISSING if self._complete else None)
        if cached is None:
            if self._stored_keys is not None and name not in self._stored_keys:
                return None  # state_keys() already showed it is not stored
            return _MISSING
        return None if cached is _MISSING else cached

    async def _fetch(self, name: str) -> bytes | None:
        """One HGET of a state key that is not known yet; the answer is cached."""
        source = self._source
        value: bytes | None = await self._read(
            "get",
            lambda: self.store.wire.execute("HGET", source, name),
            ("HGET", name),
        )
        self._cache[name] = _MISSING if value is None else value
        return value

    async def _scan(self, op: Any, *, values: bool) -> list[Any]:
        """Every field (``values``: field, value, ...) of the hash reads go to, by scan.lua:
        the whole hash in one round trip up to ``SCAN_WHOLE`` fields, in pages beyond."""
        store, source, flag = self.store, self._source, "1" if values else "0"
        items: list[Any] = []
        seen: set[Any] = set()
        cursor: Any = "0"
        while True:
            args: list[Any] = [cursor, SCAN_WHOLE, flag, SCAN_PAGE]
            reply = await self._read(
                op, lambda a=args: store.wire.script(store.scripts.scan, [source], a)
            )
            cursor, page = reply[0], reply[1]
            if cursor in (b"0", "0", 0) and not items:
                return list(page)  # one page: the whole hash, read atomically
            step = 2 if values else 1
            for i in range(0, len(page), step):
                if page[i] not in seen:  # HSCAN may return a field twice
                    seen.add(page[i])
                    items.extend(page[i : i + step])
            if cursor in (b"0", "0", 0):
                return items

    async def _commit(self) -> None:
        store = self.store
        if self._lease_lost:
            raise self._lost()
        self.record.writes = self._changes()
        deletes = [n for n, v in self._writes.items() if v is None]
        flags = (
            ("c" if self._cleared_all else "")
            + ("r" if self.record_prior else "")
            + ("w" if self.kind == "workflow" else "")
        )
        args: list[Any] = [
            self._token,
            self._commit_id,
            flags,
            int(self._expire * 1000) if self._expire else 0,
            store.lease_ttl_ms,
            store.eager_state_field_limit,
            EMPTY_GRACE_SECONDS * 1000,
            len(deletes),
            *deletes,
        ]
        for name, buf in self._writes.items():
            if buf is not None:
                args += (name, buf)
        keys = [
            self.keys.state,
            self.keys.meta,
            self.keys.lease,
            self.keys.wake,
            self.keys.prev,
            self.keys.commits,
            self.keys.old,
        ]
        attempts = 0

        def attempt() -> Any:
            nonlocal attempts
            attempts += 1
            if attempts == 2:  # a retry: the first attempt may have applied
                args[2] = flags + "a"
            return store.run_commit(keys, args, self.where)

        reply = await self._call("commit", attempt)
        refused = replies.refusal(reply)
        if refused is not None and refused.status is Status.LEASE_LOST and attempts > 1:
            self._lease_lost = True
            raise CommitError(
                f"the commit of {where(self.service, self._key)} lost its reply and its retry "
                f"found the lease gone and the commit id not among the recent ones: it may "
                f"or may not have been applied"
            )
        if refused is not None:
            raise self._refused(refused)
        self._version = replies.Committed.parse(reply).version

    def purge(self) -> None:
        """Remove the object entirely when the session ends: its state and its bookkeeping
        (version, workflow status, replay records), so its key can be used afresh."""
        self._check_writable()
        self._purge = True

    async def _run_purge(self) -> None:
        if self._lease_lost:
            raise self._lost()
        k = self.keys
        keys = [k.state, k.meta, k.lease, k.wake, k.prev, k.commits, k.old]
        args: list[Any] = [self._token, self.store.lease_ttl_ms]
        store = self.store
        reply = await self._call(
            "commit", lambda: store.wire.script(store.scripts.purge, keys, args)
        )
        refused = replies.refusal(reply)
        if refused is not None:
            raise self._refused(refused)
        self.purged = replies.Committed.parse(reply).version > 0

    async def _release(self) -> None:
        if self._lease_lost:
            return
        keys = [self.keys.lease, self.keys.wake]
        args: list[Any] = [self._token, self.store.lease_ttl_ms]
        store = self.store
        reply = await self._call(
            "release", lambda: store.wire.script(store.scripts.release, keys, args)
        )
        if isinstance(reply, list):  # {-1, type, key}; else 1 released, 0 not held
            refused = replies.refusal(reply)
            if refused is not None:
                raise self._refused(refused)

    def _start_renewer(self) -> None:
        self._renew_timer = None
        self._renewer = asyncio.create_task(self._renew_loop())

    async def _renew_loop(self) -> None:
        """Renew now, then every third of the lease ttl (started one third after the open)."""
        store = self.store
        interval = store.lease_ttl / 3
        keys = [self.keys.lease]
        args: list[Any] = [self._token, store.lease_ttl_ms]
        while True:
            try:
                renewed = await self._call(
                    "renew", lambda: store.wire.script(store.scripts.renew, keys, args)
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep trying until the lease runs out
                log.warning(
                    "renewing the lease of %s failed: %s", where(self.service, self._key), exc
                )
            else:
                if not renewed:
                    self._lease_lost = True
                    log.warning("the lease of %s was lost", where(self.service, self._key))
                    return
            await asyncio.sleep(interval)

    async def _stop_renewer(self) -> None:
        if self._renew_timer is not None:
            self._renew_timer.cancel()
            self._renew_timer = None
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None

    # -- helpers ---------------------------------------------------------------------------------

    @functools.cached_property
    def where(self) -> str:
        """The 'service'/'key' phrase error messages use for this session."""
        return where(self.service, self._key)

    def _call(
        self, op: Any, call: Any, detail: tuple[str, str | None] | None = None
    ) -> Awaitable[Any]:
        if detail is None:
            return self.store.roundtrip(op, self, call)  # no frame of its own on the hot path
        return self._call_detailed(op, call, detail)

    async def _call_detailed(self, op: Any, call: Any, detail: tuple[str, str | None]) -> Any:
        # (command, state key) for the round trip's span, where the op alone does not say
        token = ROUNDTRIP.set(detail)
        try:
            return await self.store.roundtrip(op, self, call)
        finally:
            ROUNDTRIP.reset(token)

    async def _read(self, op: Any, call: Any, detail: tuple[str, str | None] | None = None) -> Any:
        """A round trip that reads the state hash: a key of another type raises WrongTypeError."""
        try:
            return await self._call(op, call, detail)
        except (ResponseError, WrongTypeError) as exc:
            if "WRONGTYPE" in str(exc) or isinstance(exc, WrongTypeError):
                raise self._wrong_type(b"non-hash", self._source) from exc
            raise

    def _changes(self) -> tuple[int, int]:
        """(state keys set or cleared, encoded bytes set) of the buffered writes."""
        return len(self._writes), sum(len(v) for v in self._writes.values() if v is not None)

    def _check_usable(self) -> None:
        if not self._open:
            raise SessionClosedError(
                f"the session on {where(self.service, self._key)} is not open: "
                f"use it inside its 'async with' block"
            )

    def _check_writable(self) -> None:
        self._check_usable()
        if self.shared:
            raise ReadOnlySessionError(
                f"{where(self.service, self._key)} is open in a shared session, "
                f"which can only read; write from an exclusive session"
            )

    def _check_name(self, name: object) -> str:
        if type(name) is str and name.isascii():
            return name  # the common case: nothing that can fail to encode
        if not isinstance(name, str):
            raise InvalidNameError(
                f"state key of {where(self.service, self._key)} must be a str, "
                f"got {type(name).__name__}"
            )
        try:
            name.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidNameError(
                f"state key {name!r} of {where(self.service, self._key)} is not valid UTF-8: "
                f"{exc.reason}"
            ) from None
        return name

    def _field(self, raw: bytes | str) -> str:
        if isinstance(raw, str):
            return raw
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise StateDecodeError(
                f"{where(self.service, self._key)} has a state key that is not UTF-8: {raw!r}"
            ) from exc

    @staticmethod
    def _text(raw: bytes | str | None) -> str:
        if raw is None:
            return ""
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    def _wrong_type(self, found: bytes | str, redis_key: bytes | str) -> WrongTypeError:
        key = self._text(redis_key)
        want = {"lease": "string", "wake": "list", "commits": "sorted set"}.get(
            key.rpartition(":")[2], "hash"
        )
        return WrongTypeError(
            f"Redis key {key!r} of {where(self.service, self._key)} holds a "
            f"{self._text(found)}, not a {want}; it was not written by restate-redis, and "
            f"nothing was written"
        )

    def _refused(self, refused: replies.Refusal) -> StateError:
        """The error for a script's refusal (anything but BUSY)."""
        if refused.status is Status.WRONG_TYPE:
            return self._wrong_type(refused.found, refused.where)
        if refused.status is Status.CORRUPT:
            return self._corrupt(refused.found, refused.where)
        if refused.status is Status.LEASE_LOST:
            return self._lost()
        if refused.status is Status.COMPLETED:
            return WorkflowCompletedError(
                f"workflow {where(self.service, self._key)} already completed its run; "
                f"its state is kept until the retention expires. To run it again, purge "
                f"it: restate-redis kv purge {self.service} {self._key} (or "
                f"await store.purge({self.service!r}, {self._key!r}))"
            )
        return StateError(f"unexpected reply {refused} for {where(self.service, self._key)}")

    def _corrupt(self, field: bytes | str, value: bytes | str) -> CorruptStateError:
        return CorruptStateError(
            f"the bookkeeping of {where(self.service, self._key)} does not parse: field "
            f"{self._text(field)!r} of {self.keys.meta!r} holds {value!r}; it was not written "
            f"by restate-redis, and nothing was written"
        )

    def _lost(self) -> LeaseLostError:
        self._lease_lost = True
        return LeaseLostError(
            f"the lease of {where(self.service, self._key)} expired or was taken over before "
            f"the commit (lease_ttl={self.store.lease_ttl:g}s); nothing was written"
        )

    def __repr__(self) -> str:
        kind = "shared" if self.shared else "exclusive"
        return f"<Session {self.kind} {self.service!r}/{self._key!r} {kind} {self.mode}>"


__all__ = ["Session", "StateError"]
