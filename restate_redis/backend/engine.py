"""The Redis side of a session: each call a session makes is one method here, one round trip
(a script, an HGET, a BLPOP), with its retries, its tracing and its reply decoded.

A session sees this class only through the small interface it declares
(:class:`restate_redis.session.Backend`): open, commit, purge, release, renew, read a field,
read names, wait. Everything about redis-py (the client, the store's command link, the
scripts, WAIT for replicas) stays on this side of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from redis.exceptions import NoScriptError

from ..errors import StateError, where
from ..keyspace import EMPTY_GRACE_SECONDS, ObjectKeys
from ..observe import ROUNDTRIP, Observer, Op, SessionRecord
from . import replies
from .connection import RedisClient
from .replication import commit_and_wait
from .replies import Committed, Opened, Refusal, Released, Status
from .retry import RetryPolicy, as_state_error, is_transient, redis_errors
from .scripts import Scripts
from .wire import Wire

T = TypeVar("T")
log = logging.getLogger("restate_redis")
Cursor = bytes | str | int


Mode = Literal["eager", "lazy", "preload"]


@dataclass(frozen=True, slots=True)
class ServerFeatures:
    """What the server offers that some calls need (probed once per store)."""

    server: str
    """Its name and version: "Redis 7.0.15", "Valkey 9.1.2"."""
    field_expiry: bool
    """Hash-field expiry (HPEXPIRE, Redis 7.4+ and Valkey 9+): state keys with an expiry of
    their own."""
    refusal: str = ""
    """The server's error when it lacks field expiry."""

    def no_field_expiry(self) -> str:
        """Why a state key cannot get an expiry of its own here."""
        return (
            f"{self.server} has no hash-field expiry, which a state key's own ttl needs "
            f"(Redis 7.4+ or Valkey 9+; the server said: {self.refusal})"
        )


@dataclass(slots=True, eq=False)
class SessionRef:
    """One session as its backend sees it: the object's keys, the record its observer sees,
    the lease token, and what the open and the commit ask (fixed when the session is made)."""

    record: SessionRecord
    keys: ObjectKeys
    token: str
    """The lease token ("" for a shared session, which takes no lease)."""
    mode: Mode
    preload: tuple[str, ...]
    """preload: the state keys the open reads."""
    run: bool
    """A workflow's run session: refused for a completed workflow, marks it completed."""
    commit_id: str | None
    """The caller's commit id (a replay is recognised by it)."""
    commit_tag: str
    """The id every exclusive commit carries: the caller's, or a random one."""
    record_prior: bool
    """Keep the prior values of what the commit changes, for a replay of it."""
    expire: float | None
    """Seconds after the commit until the object's keys expire (ttl, retention)."""
    history: str = ""
    """commit.lua's history argument: "" off, else the limits and the origin of the entry
    (:meth:`restate_redis.history.History.spec`)."""


@dataclass(frozen=True, slots=True)
class CommitRequest:
    """What one commit applies, and how."""

    writes: Sequence[Any]
    """commit.lua's tail: the deletes counted, the keys given an expiry counted, then name,
    value pairs."""
    cleared_all: bool
    """Every stored key is cleared first."""
    blind: bool = False
    """The session never opened: the script takes the lease for itself when it is free, and
    is refused BUSY while another session holds it."""
    handoff: str = ""
    """The token of a session of this store waiting for the object: the lease is handed to
    it instead of released."""


class RedisBackend:
    """The round trips of the sessions of one store, on one client."""

    __slots__ = (
        "_probed",
        "_releases",
        "client",
        "eager_state_field_limit",
        "eager_state_size_limit",
        "features",
        "is_cluster",
        "lease_ttl",
        "lease_ttl_ms",
        "min_replicas",
        "observer",
        "replica_timeout",
        "retry",
        "scripts",
        "wait_slice",
        "wire",
    )

    def __init__(
        self,
        client: RedisClient,
        *,
        observer: Observer,
        retry: RetryPolicy,
        lease_ttl: float,
        eager_state_size_limit: int,
        eager_state_field_limit: int,
        min_replicas: int,
        replica_timeout: float,
        is_cluster: bool,
        wait_slice: float,
    ) -> None:
        self.client = client
        self.scripts = Scripts.register(client)
        self.wire = Wire(client)
        self.observer = observer
        self.retry = retry
        self.lease_ttl = lease_ttl
        self.lease_ttl_ms = max(1, int(lease_ttl * 1000))
        self.eager_state_size_limit = eager_state_size_limit
        self.eager_state_field_limit = eager_state_field_limit
        self.min_replicas = min_replicas
        self.replica_timeout = replica_timeout
        self.is_cluster = is_cluster
        self.wait_slice = wait_slice
        """The longest single BLPOP of a lease wait (shorter than the socket timeout)."""
        self._releases: set[asyncio.Task[None]] = set()
        self._probed = False
        self.features: ServerFeatures | None = None
        """What the server offers; probed after the first exclusive open (one round trip per
        store), None until then."""

    @property
    def replicated(self) -> bool:
        """Commits wait for ``min_replicas`` replicas (WAIT, in the commit's round trip)."""
        return self.min_replicas > 0

    def field_expiry_missing(self) -> str | None:
        """Why a state key cannot get an expiry of its own on this server (its name and
        version), or None: it can, or that is not known yet (the commit then checks)."""
        features = self.features
        if features is None or features.field_expiry:
            return None
        return features.no_field_expiry()

    async def probe(self, key: str) -> ServerFeatures:
        """What the server holding ``key`` offers (probe.lua), asked once and kept (the
        first exclusive open asks, right after it opened)."""
        features = self.features
        if features is None:
            script, wire = self.scripts.probe, self.wire
            async with redis_errors(f"asking the server of {key!r} what it offers"):
                reply = await self.retry.run("probe", key, lambda: wire.script(script, [key], []))
            features = ServerFeatures(
                replies.text(reply[1]), bool(int(reply[0])), replies.text(reply[2])
            )
            self.features = features
        return features

    # -- the session's round trips -------------------------------------------------------------

    async def open(
        self, ref: SessionRef, cached: tuple[int, str, int] | None = None, names: Sequence[str] = ()
    ) -> Opened | Refusal:
        """open.lua: take the lease (unless the token is "", a shared session) and read what
        the mode needs; a refusal when the lease is busy or the object cannot be opened.

        ``cached``: the (version, last commit id, key count) of a snapshot the caller holds:
        while it is still the state, the reply is mode "cached" and carries no state. ``names``: the
        state keys a lazy session reads with its open (a preload session's are its own)."""
        keys = ref.keys
        args: list[Any] = [
            ref.token,
            self.lease_ttl_ms,
            ref.mode,
            self.eager_state_size_limit,
            "1" if ref.run else "0",
            ref.commit_id or "",
            self.eager_state_field_limit,
            cached[0] if cached else "",
            cached[1] if cached else "",
            cached[2] if cached else "",
            *(ref.preload or names),
        ]
        redis_keys = [
            keys.state,
            keys.lease,
            keys.wait,
            keys.old,
            keys.ttls,
            keys.v1_meta,
            keys.v1_prev,
        ]
        script, wire = self.scripts.open, self.wire
        sent = time.monotonic()
        reply = await self._roundtrip(
            "open", ref.record, lambda: wire.script(script, redis_keys, args)
        )
        refused = replies.refusal(reply)
        if refused is not None:
            return refused
        if not self._probed and ref.token:  # a session that may give a key a ttl
            self._probed = True  # asked once: a failed probe is not a round trip per open
            with contextlib.suppress(StateError):  # unknown then: the commit checks
                await self.probe(keys.state)
        return Opened.parse(reply, sent)

    async def commit(self, ref: SessionRef, request: CommitRequest) -> Committed | Refusal:
        """commit.lua: the request's writes applied atomically and the lease released (or
        handed over). A retry after a lost reply is flagged, so the script recognises a first
        attempt that applied; a retry that finds the lease gone and the commit not applied is
        a refusal with ``after_retry`` set."""
        blind, cleared_all, handoff = request.blind, request.cleared_all, request.handoff
        flags = (
            ("t" if blind else "")
            + ("c" if cleared_all else "")
            + ("r" if ref.record_prior else "")
            + ("w" if ref.run else "")
        )
        expire, record = ref.expire, ref.record
        args: list[Any] = [
            ref.token,
            ref.commit_tag,
            flags,
            int(expire * 1000) if expire else 0,
            self.lease_ttl_ms,
            self.eager_state_field_limit,
            EMPTY_GRACE_SECONDS * 1000,
            handoff,
            ref.history,
            *request.writes,
        ]
        redis_keys = commit_keys(ref.keys, bool(ref.history))
        attempts = 0

        def attempt() -> Awaitable[Any]:
            nonlocal attempts
            attempts += 1
            if attempts == 2:  # a retry: the first attempt may have applied
                args[2] = flags + "a"
            if self.min_replicas:
                return commit_and_wait(self, redis_keys, args, record)
            return self.wire.script(self.scripts.commit, redis_keys, args)

        reply = await self._roundtrip("commit", record, attempt)
        refused = replies.refusal(reply)
        if refused is None:
            return Committed.parse(reply)
        if refused.status is Status.LEASE_LOST and attempts > 1:
            return Refusal(Status.LEASE_LOST, after_retry=True)
        if refused.status is Status.NO_FIELD_EXPIRY:  # the probe asked another server
            self.features = ServerFeatures(refused.found, False, refused.where)
        return refused

    async def purge(self, ref: SessionRef) -> Committed | Refusal:
        """purge.lua: the object's every key removed, under the lease."""
        redis_keys = commit_keys(ref.keys, history=True)  # purged with the rest
        args: list[Any] = [ref.token, self.lease_ttl_ms]
        script, wire = self.scripts.purge, self.wire
        reply = await self._roundtrip(
            "commit", ref.record, lambda: wire.script(script, redis_keys, args)
        )
        return replies.refusal(reply) or Committed.parse(reply)

    async def release(self, ref: SessionRef, handoff: str = "") -> Released | Refusal:
        """release.lua: give the lease up without writing, waking one waiter (``handoff``: or
        hand it to that token); a refusal only for a key of the wrong type (a lease no longer
        held is nothing to release: ``Released.NOT_HELD``, which is falsy)."""
        redis_keys = release_keys(ref.keys)
        args: list[Any] = [ref.token, self.lease_ttl_ms, handoff]
        script, wire = self.scripts.release, self.wire
        reply = await self._roundtrip(
            "release", ref.record, lambda: wire.script(script, redis_keys, args)
        )
        if isinstance(reply, list):
            return replies.refusal(reply) or Refusal(Status.WRONG_TYPE)
        return Released(int(reply))

    def release_soon(self, ref: SessionRef) -> asyncio.Task[None] | None:
        """release.lua, sent now but not waited for: a session that wrote nothing gives its
        lease back without its caller waiting a round trip (a lost release only keeps the next
        holder waiting until the lease expires; it never loses data). On the store's link the
        command is queued at once, ahead of anything sent after it: None then; else (pooled
        connections, which do not keep that order) the task that ends with its reply."""
        keys, args = release_keys(ref.keys), [ref.token, self.lease_ttl_ms, ""]
        sent = self.wire.send_now(self.scripts.release, keys, args)
        task = asyncio.get_running_loop().create_task(self._release_quietly(ref, sent))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)
        return None if sent is not None else task

    async def _release_quietly(self, ref: SessionRef, sent: asyncio.Future[Any] | None) -> None:
        what = where(ref.record.service, ref.record.key)
        try:
            if sent is None:
                released = await self.release(ref)
            else:
                released = await self._sent_release(ref, sent)
        except Exception as exc:  # the lease then expires after lease_ttl
            log.warning("releasing the lease of %s failed: %s", what, exc)
            return
        if isinstance(released, Refusal):
            log.warning("releasing the lease of %s: %s", what, released)

    async def _sent_release(self, ref: SessionRef, sent: asyncio.Future[Any]) -> Released | Refusal:
        """The reply of a release already queued on the link (a retry sends it again)."""
        keys, args = release_keys(ref.keys), [ref.token, self.lease_ttl_ms, ""]
        first: list[asyncio.Future[Any]] = [sent]

        async def reply_of_sent() -> Any:
            try:
                return await first.pop()
            except NoScriptError:  # not loaded yet (or the server restarted): load, send again
                return await self.wire.script(self.scripts.release, keys, args)

        def call() -> Awaitable[Any]:
            if first:
                return reply_of_sent()
            return self.wire.script(self.scripts.release, keys, args)

        reply = await self._roundtrip("release", ref.record, call)
        if isinstance(reply, list):
            return replies.refusal(reply) or Refusal(Status.WRONG_TYPE)
        return Released(int(reply))

    async def settle(self) -> None:
        """Wait until the releases sent without waiting have their replies."""
        while self._releases:
            await asyncio.wait(set(self._releases), timeout=self.retry.timeout)

    def release_later(self, ref: SessionRef) -> None:
        """Release the lease the session may hold, in a task that outlives it (for a session
        whose open was cancelled or failed after the script ran)."""
        if not ref.token:
            return
        args: list[Any] = [ref.token, self.lease_ttl_ms]
        keys = ref.keys
        redis_keys = release_keys(keys)

        async def release() -> None:
            call = lambda: self.wire.script(self.scripts.release, redis_keys, args)  # noqa: E731
            # On the link the release runs after the open it follows; on pooled connections
            # (a cluster, the public path) it may run first, so look again a little later.
            for delay in (0.0, 0.2, 1.0) if not self.wire.direct else (0.0,):
                await asyncio.sleep(delay)
                try:
                    if await self.retry.run("release", keys.lease, call) == 1:
                        return
                except Exception:  # the lease then expires after lease_ttl
                    return

        task = asyncio.get_running_loop().create_task(release())
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def renew(self, ref: SessionRef) -> bool:
        """renew.lua: extend the lease by ``lease_ttl``; False when it is no longer held."""
        redis_keys, args = [ref.keys.lease], [ref.token, self.lease_ttl_ms]
        script, wire = self.scripts.renew, self.wire
        return bool(
            await self._roundtrip(
                "renew", ref.record, lambda: wire.script(script, redis_keys, args)
            )
        )

    async def read_field(self, ref: SessionRef, source: str, name: str) -> bytes | None:
        """HGET of one state key from hash ``source``."""
        wire = self.wire
        token = ROUNDTRIP.set(("HGET", name))  # what the span of this round trip names
        try:
            value: bytes | None = await self._roundtrip(
                "get", ref.record, lambda: wire.execute("HGET", source, name)
            )
            return value
        finally:
            ROUNDTRIP.reset(token)

    async def read_names(
        self,
        ref: SessionRef,
        source: str,
        cursor: Cursor,
        *,
        values: bool,
        whole: int,
        page: int,
    ) -> tuple[Cursor, list[Any]]:
        """scan.lua: every field of hash ``source`` (``values``: field, value pairs) in one
        atomic page when it has at most ``whole`` fields, else the next HSCAN page of about
        ``page`` from ``cursor``; the next cursor ("0" at the end) and the page."""
        args: list[Any] = [cursor, whole, "1" if values else "0", page]
        script, wire = self.scripts.scan, self.wire
        reply = await self._roundtrip(
            "all" if values else "keys", ref.record, lambda: wire.script(script, [source], args)
        )
        return reply[0], reply[1]

    async def wait(self, ref: SessionRef, seconds: float) -> None:
        """Block up to ``seconds`` until a holder of the lease releases it (BLPOP)."""
        client, wake = self.client, [ref.keys.wake]
        await self._roundtrip("wait", ref.record, lambda: client.blpop(wake, timeout=seconds))

    async def _roundtrip(
        self, op: Op, record: SessionRecord, call: Callable[[], Awaitable[T]]
    ) -> T:
        """Every round trip passes here: traced, retried after transient errors (``call``
        can be called again), and Redis's errors turned into the library's."""
        observer, started = self.observer, time.monotonic()
        try:  # the first attempt inline: the hot path, no closure or retry frame
            return await observer.traced(op, record, call)
        except Exception as exc:
            if self.retry.attempts <= 1 or not is_transient(exc):
                translated = _state_error(exc, op, record)
                if translated is exc:
                    raise
                raise translated from exc
            first = exc

        def attempt() -> Awaitable[T]:  # one span per attempt, inside the retries
            observer.record_retry(op, record)
            return observer.traced(op, record, call)

        try:
            return await self.retry.after_failure(
                op, where(record.service, record.key), attempt, first, started
            )
        except Exception as exc:
            translated = _state_error(exc, op, record)
            if translated is exc:
                raise
            raise translated from exc

    async def aclose(self) -> None:
        """Wait for the releases still on their way, then close the command link."""
        if self._releases:
            await asyncio.wait(set(self._releases), timeout=self.retry.timeout)
        await self.wire.aclose()


def commit_keys(keys: ObjectKeys, history: bool = False) -> list[str]:
    """KEYS of the commit and purge scripts, in their order; ``history``: the history stream
    last (only a commit with history on names it: off, the commit touches no extra key)."""
    names = [
        keys.state,
        keys.lease,
        keys.wait,
        keys.wake,
        keys.commits,
        keys.old,
        keys.ttls,
        keys.v1_meta,
        keys.v1_prev,
    ]
    if history:
        names.append(keys.history)
    return names


def release_keys(keys: ObjectKeys) -> list[str]:
    """KEYS of the release script."""
    return [keys.lease, keys.wake, keys.wait]


def _state_error(exc: Exception, op: str, record: SessionRecord) -> Exception:
    """A Redis error of a session's round trip as a StateError (errors of ours pass as they
    are); a WRONGTYPE reply keeps its ResponseError form for the session to name the key."""
    if isinstance(exc, StateError) or "WRONGTYPE" in str(exc):
        return exc
    translated = as_state_error(exc, f"{op} on {where(record.service, record.key)}")
    return translated if isinstance(translated, Exception) else exc
