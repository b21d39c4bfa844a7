"""RedisStateStore: how to reach Redis, the store-wide options, and where sessions come from."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import secrets
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from . import observe
from .backend import exchange
from .backend.connection import RedisClient, connect, socket_timeout_of
from .backend.engine import RedisBackend
from .backend.inventory import SkippedKeys
from .backend.replies import Refusal, Status
from .backend.retry import RetryPolicy, redis_errors
from .backend.timeline import Timeline
from .codecs import MAGIC, CodecChain, Compression, Encryption, StoredBytes
from .durations import Duration, seconds
from .errors import (
    CorruptStateError,
    ImportConflictError,
    InvalidOptionError,
    LeaseLostError,
    ServerFeatureError,
    StateDecodeError,
    UnknownObjectError,
    VersionConflictError,
    WrongTypeError,
    where,
)
from .history import (
    Decode,
    History,
    HistoryEntry,
    Origin,
    check_origin,
    follow_spec,
    history_option,
    not_kept,
    parse_entry,
    reach,
    rebuild,
    version_at,
)
from .keyspace import (
    DEFAULT_NAMESPACE,
    META_FIELD,
    Keyspace,
    Meta,
    check_key,
    check_service,
)
from .records import (
    ON_CONFLICT,
    Imported,
    ImportReport,
    ObjectRecord,
    OnConflict,
    check_record,
)
from .serde import MsgPackSerde, Serde
from .session import Session, StatePreload
from .session.cache import SnapshotCache
from .session.handoff import LocalLeases
from .tasks import bounded

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

T = TypeVar("T")
_H = TypeVar("_H")  # a restate-sdk handler, VirtualObject or Workflow
RESTATE_INTEGRATION = "restate_redis.ext.restate_sdk:RestateState"

MiB = 1024 * 1024
DEFAULT_FIELD_LIMIT = 20_000
DEFAULT_SNAPSHOT_CACHE = 64 * MiB
DEFAULT_RETENTION = timedelta(days=1)
_STORED = StoredBytes()  # values as Redis holds them: a restore writes back the same bytes


def _positive_int(value: int, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise InvalidOptionError(f"{what} must be a positive int, got {value!r}")
    return value


def _non_negative(value: int, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidOptionError(f"{what} must be an int >= 0, got {value!r}")
    return value


def _text(raw: bytes | str) -> str:
    return raw.decode("utf-8", "surrogateescape") if isinstance(raw, bytes) else raw


def _is_cluster(client: RedisClient) -> bool:
    from redis.asyncio.cluster import RedisCluster

    return isinstance(client, RedisCluster)


def _decodes_responses(client: RedisClient) -> bool:
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", None)
    if kwargs is None:
        kwargs = getattr(client, "connection_kwargs", None)
    if kwargs is None:
        kwargs = getattr(getattr(client, "nodes_manager", None), "connection_kwargs", None)
    return bool((kwargs or {}).get("decode_responses"))


class RedisStateStore:
    """Restate-style K/V state for Virtual Objects and Workflows, kept in Redis.

    ``RedisStateStore(client)`` wraps an existing ``redis.asyncio`` client: a ``Redis``
    (also a Sentinel ``master_for`` one) or a ``RedisCluster``, created with
    ``decode_responses=False``; :meth:`from_url` creates one. Options:

    - ``namespace``: prefix of every Redis key (default ``"restate"``).
    - ``lease_ttl``: how long an exclusive session's lease lives without renewal; it is
      renewed in the background every third of it (default 10 s).
    - ``acquire_timeout``: how long an exclusive session waits for the lease (default 30 s).
    - ``eager_state_size_limit``: an eager session whose stored state is larger falls back to
      lazy reads (default 32 MiB, like Restate).
    - ``eager_state_field_limit``: so does one on an object with more state keys than this
      (default 20,000), so that no open turns a huge hash into one reply.
    - ``snapshot_cache_bytes``: the store keeps the state its sessions read or committed, up to
      this many bytes (least recently used out; default 64 MiB; 0 turns it off). An open names
      the snapshot it holds, and the script sends no state while the object's version and last
      commit id still match it.
    - ``max_value_bytes``: the largest encoded value ``set()`` accepts (default 32 MiB).
    - ``serde``: the default serde (msgpack).
    - ``codecs``: :class:`~restate_redis.Compression` and/or
      :class:`~restate_redis.Encryption`, applied in this order to what the serde wrote (any
      serde, the default or one given to ``get``/``set``), and in reverse on reads; values
      written before stay readable. See :mod:`restate_redis.codecs`.
    - ``workflow_retention``: how long a completed workflow's state is kept (default 1 day).
    - ``retry_attempts``, ``retry_timeout``: every round trip is retried after transient errors
      (connection lost, timeout, failover, cluster resharding) with exponential backoff and
      jitter, at most this many attempts and this many seconds in all (default 10, 15 s);
      1 turns retries off.
    - ``min_replicas``: when > 0, a commit waits (WAIT, in the commit's round trip) until this
      many replicas have it, up to ``replica_timeout`` (default 1 s), else
      :class:`~restate_redis.errors.ReplicationError`.
    - ``trace_object_key``: how spans carry the object key or workflow id: ``"plain"``
      (default), ``"hash"`` (a SHA-256 prefix) or ``"omit"``.
    - ``tracer_provider`` / ``meter_provider``: OpenTelemetry providers for this store's spans
      and metrics (default: the global ones; nothing is recorded when no SDK is configured).
    - ``history``: a :class:`~restate_redis.History` (or True for its defaults) keeps each
      object's recent commits, with the prior and new value of every key they changed, in the
      same script as the commit: :meth:`history`, :meth:`restore`, :meth:`undo`,
      :meth:`watch`. Off by default (None): no key, byte or round trip is added.
    """

    def __init__(
        self,
        client: RedisClient,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        lease_ttl: Duration = 10.0,
        acquire_timeout: Duration = 30.0,
        eager_state_size_limit: int = 32 * MiB,
        eager_state_field_limit: int = DEFAULT_FIELD_LIMIT,
        snapshot_cache_bytes: int = DEFAULT_SNAPSHOT_CACHE,
        max_value_bytes: int = 32 * MiB,
        serde: Serde[Any] | None = None,
        codecs: Sequence[Compression | Encryption] | None = None,
        workflow_retention: Duration = DEFAULT_RETENTION,
        retry_attempts: int = 10,
        retry_timeout: Duration = 15.0,
        min_replicas: int = 0,
        replica_timeout: Duration = 1.0,
        trace_object_key: observe.ObjectKeyMode = "plain",
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        history: History | bool | None = None,
    ) -> None:
        if _decodes_responses(client):
            raise InvalidOptionError(
                "RedisStateStore needs a client created with decode_responses=False: "
                "state values are bytes"
            )
        self.client = client
        self.keyspace = Keyspace(namespace)
        self.lease_ttl = seconds(lease_ttl, "lease_ttl")
        self.lease_ttl_ms = max(1, int(self.lease_ttl * 1000))
        self.acquire_timeout = seconds(acquire_timeout, "acquire_timeout", allow_zero=True)
        self.eager_state_size_limit = _positive_int(
            eager_state_size_limit, "eager_state_size_limit"
        )
        self.eager_state_field_limit = _positive_int(
            eager_state_field_limit, "eager_state_field_limit"
        )
        self.max_value_bytes = _positive_int(max_value_bytes, "max_value_bytes")
        if (
            not isinstance(snapshot_cache_bytes, int)
            or isinstance(snapshot_cache_bytes, bool)
            or snapshot_cache_bytes < 0
        ):
            raise InvalidOptionError(
                f"snapshot_cache_bytes must be an int >= 0 (0 turns the cache off), got "
                f"{snapshot_cache_bytes!r}"
            )
        self.snapshots = (
            SnapshotCache(
                snapshot_cache_bytes, self.eager_state_size_limit, self.eager_state_field_limit
            )
            if snapshot_cache_bytes
            else None
        )
        """The snapshots this store's sessions read or committed (None: turned off)."""
        self.local_leases = LocalLeases()
        """The objects this store's sessions hold, and the sessions waiting for them."""
        self.serde: Serde[Any] = serde if serde is not None else MsgPackSerde()
        self.codec = CodecChain(codecs)
        self.workflow_retention = seconds(workflow_retention, "workflow_retention")
        self.retry = RetryPolicy(
            attempts=_positive_int(retry_attempts, "retry_attempts"),
            timeout=seconds(retry_timeout, "retry_timeout"),
        )
        if not isinstance(min_replicas, int) or isinstance(min_replicas, bool) or min_replicas < 0:
            raise InvalidOptionError(f"min_replicas must be an int >= 0, got {min_replicas!r}")
        self.min_replicas = min_replicas
        self.replica_timeout = seconds(replica_timeout, "replica_timeout")
        self.is_cluster = _is_cluster(client)
        # Each BLPOP of a lease wait, and each WAIT, must end before the socket timeout fires.
        timeout = socket_timeout_of(client)
        self.wait_slice = 5.0 if timeout is None else max(0.01, min(5.0, timeout / 2))
        if min_replicas and timeout is not None and self.replica_timeout >= timeout:
            raise InvalidOptionError(
                f"replica_timeout={self.replica_timeout:g}s must be shorter than the client's "
                f"socket_timeout={timeout:g}s: WAIT blocks the connection that long"
            )
        self.telemetry: observe.Observer = observe.make(
            client,
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            object_key=trace_object_key,
        )
        self.backend = RedisBackend(
            client,
            observer=self.telemetry,
            retry=self.retry,
            lease_ttl=self.lease_ttl,
            eager_state_size_limit=self.eager_state_size_limit,
            eager_state_field_limit=self.eager_state_field_limit,
            min_replicas=self.min_replicas,
            replica_timeout=self.replica_timeout,
            is_cluster=self.is_cluster,
            wait_slice=self.wait_slice,
        )
        """The sessions' round trips (scripts, reads, waits) with their retries and tracing."""
        self.history_options: History | None = history_option(history)
        """What the store's history keeps (None: off)."""
        self.timeline = Timeline(client, self.retry, self.wait_slice)
        self._owns_client = False

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        lease_ttl: Duration = 10.0,
        acquire_timeout: Duration = 30.0,
        eager_state_size_limit: int = 32 * MiB,
        eager_state_field_limit: int = DEFAULT_FIELD_LIMIT,
        snapshot_cache_bytes: int = DEFAULT_SNAPSHOT_CACHE,
        max_value_bytes: int = 32 * MiB,
        serde: Serde[Any] | None = None,
        codecs: Sequence[Compression | Encryption] | None = None,
        workflow_retention: Duration = DEFAULT_RETENTION,
        retry_attempts: int = 10,
        retry_timeout: Duration = 15.0,
        min_replicas: int = 0,
        replica_timeout: Duration = 1.0,
        trace_object_key: observe.ObjectKeyMode = "plain",
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        history: History | bool | None = None,
        **redis_options: Any,
    ) -> RedisStateStore:
        """A store on a new client for ``url``.

        ``redis://``, ``rediss://`` (TLS), ``unix://``, ``redis+cluster://h:p,h:p,...`` and
        ``redis+sentinel://h:p,h:p/service_name``, each with an optional ``user:password@``;
        the full syntax is in :mod:`restate_redis.backend.connection`. Extra keyword arguments go to
        the redis-py client.
        """
        client = connect(url, **redis_options)
        store = cls(
            client,
            namespace=namespace,
            lease_ttl=lease_ttl,
            acquire_timeout=acquire_timeout,
            eager_state_size_limit=eager_state_size_limit,
            eager_state_field_limit=eager_state_field_limit,
            snapshot_cache_bytes=snapshot_cache_bytes,
            max_value_bytes=max_value_bytes,
            serde=serde,
            codecs=codecs,
            workflow_retention=workflow_retention,
            retry_attempts=retry_attempts,
            retry_timeout=retry_timeout,
            min_replicas=min_replicas,
            replica_timeout=replica_timeout,
            trace_object_key=trace_object_key,
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            history=history,
        )
        store._owns_client = True
        return store

    def object(
        self,
        service: str,
        key: str,
        *,
        shared: bool = False,
        state_preload: StatePreload = True,
        ttl: Duration | None = None,
        commit_id: str | None = None,
        lease_token: str | None = None,
        lease_on_enter: bool = False,
        origin: Origin = "session",
    ) -> Session:
        """A session on Virtual Object ``service``/``key``, used as ``async with``.

        Exclusive by default (one at a time per object, across all workers); ``shared=True``
        is a concurrent read-only session. ``state_preload``: ``True`` eager, ``False`` lazy,
        a list of state keys to load up front with the rest lazy. ``ttl``: the object's keys
        expire this long after its last commit (sliding). ``commit_id``: a unique id for this
        session's work (a request or invocation id): if the last commit of this object carried
        the same id, the session is a replay: it sees the state as it was before that commit
        (``session.replayed`` is True) and its own commit is recognised and not applied again.
        ``lease_token``: the lease holder's token (random by default); a session with the
        same token as a holder that died mid-session re-enters its lease at once instead of
        waiting out ``lease_ttl``. Give it only to a retry of the same work.

        A lazy session (``state_preload=False``) opens on its first read, which rides on the
        open: it holds the object from its first access, not from entering the block, and a
        session that only writes never opens (its commit takes the lease, in one round trip).
        ``lease_on_enter=True`` takes the lease on entering the block instead.

        ``origin``: what the commit's history entry names as its origin (with ``history``
        on): "session" (the default), "cli", "ui", "import" or "restore".
        """
        return Session(
            self,
            "object",
            check_service(service),
            check_key(service, key),
            shared=shared,
            state_preload=state_preload,
            expire=None if ttl is None else seconds(ttl, "ttl"),
            commit_id=commit_id,
            record_prior=commit_id is not None,
            lease_token=lease_token,
            lease_on_enter=lease_on_enter,
            history=self._history_spec(service, check_origin(origin)),
        )

    def workflow(
        self,
        service: str,
        workflow_id: str,
        *,
        shared: bool = False,
        state_preload: StatePreload = True,
        retention: Duration | None = None,
        commit_id: str | None = None,
        lease_token: str | None = None,
        origin: Origin = "session",
    ) -> Session:
        """A session on workflow ``service``/``workflow_id``, used as ``async with``.

        Exclusive (``shared=False``) is the workflow's run handler: it runs once; when it
        commits the workflow is completed and all its keys expire after ``retention``
        (default: the store's ``workflow_retention``). Opening it again for a completed
        workflow raises :class:`~restate_redis.errors.WorkflowCompletedError`. Shared sessions
        read the state until it expires.
        """
        return Session(
            self,
            "workflow",
            check_service(service),
            check_key(service, workflow_id, "workflow id"),
            shared=shared,
            state_preload=state_preload,
            expire=self.workflow_retention
            if retention is None
            else seconds(retention, "retention"),
            commit_id=commit_id,
            record_prior=commit_id is not None,
            lease_token=lease_token,
            history=self._history_spec(service, check_origin(origin)),
        )

    def restate_state(self, **options: Any) -> Callable[[_H], _H]:
        """A decorator that keeps a restate-sdk handler's K/V state in this store.

        Put it under the SDK's ``@obj.handler()`` / ``@wf.main()``; the handler's
        ``ctx.get / set / clear / clear_all / state_keys`` then use Redis. Applied to a
        ``VirtualObject`` or ``Workflow`` (``store.restate_state()(obj)``) it switches every
        handler defined so far. Options: ``state_preload`` (``True`` eager, ``False`` lazy, or
        a list of state keys), ``workflow_retention`` (default: the handler's own, else the
        store's), ``ttl`` (Virtual Objects: expire state this long after the last commit).
        Needs ``pip install 'restate-redis[restate]'``.
        """
        # The integration lives above the core: it is found by name, so that the core imports
        # nothing of it or of restate-sdk (see the import-linter contracts in pyproject.toml).
        module, _, name = RESTATE_INTEGRATION.partition(":")
        factory: Callable[..., Callable[[_H], _H]] = getattr(importlib.import_module(module), name)
        return factory(self, **options)

    # -- history --------------------------------------------------------------------------------

    def _history_spec(self, service: str, origin: str) -> str:
        """commit.lua's history argument for a commit of ``origin`` on ``service``."""
        options = self.history_options
        return "" if options is None else options.spec(service, origin)

    def _decoder(self, service: str, key: str) -> Decode:
        """How an entry's values are decoded: the store's codecs, then its serde."""
        serde, codec = self.serde, self.codec

        def decode(name: str, raw: bytes) -> Any:
            if raw[:1] == MAGIC or codec.strict:
                raw = codec.decode(raw, service, key, name)
            try:
                return serde.deserialize(raw)
            except Exception as exc:
                raise StateDecodeError(
                    f"cannot decode {where(service, key, name)} in its history with "
                    f"{type(serde).__name__}: {exc}"
                ) from exc

        return decode

    def _entries(self, service: str, key: str) -> AsyncIterator[HistoryEntry]:
        """The object's history entries, newest first."""
        stream = self.keyspace.object_keys(service, key).history
        decode = self._decoder(service, key)
        what = where(service, key)

        async def entries() -> AsyncIterator[HistoryEntry]:
            async for entry_id, fields in self.timeline.newest_first(stream, what):
                yield parse_entry(service, key, entry_id, fields, decode)

        return entries()

    async def history(
        self,
        service: str,
        key: str,
        since_version: int | None = None,
        limit: int | None = None,
    ) -> list[HistoryEntry]:
        """The history of object (or workflow) ``service``/``key``, oldest first: one
        :class:`~restate_redis.history.HistoryEntry` per commit the log keeps.

        ``since_version``: only the commits after that version (with ``limit``: the first
        ``limit`` of them, to page forward). Without it, ``limit`` gives the last ``limit``
        commits. Empty for an object without history (the store's ``history`` option off, or
        nothing committed since it was turned on). Readable with history off too.
        """
        check_key(check_service(service), key)
        if since_version is not None:
            _non_negative(since_version, "since_version")
        if limit is not None:
            _positive_int(limit, "limit")
        found: list[HistoryEntry] = []
        async for entry in self._entries(service, key):
            if since_version is not None and entry.version <= since_version:
                break
            found.append(entry)
            if since_version is None and limit is not None and len(found) >= limit:
                break
        found.reverse()
        if since_version is not None and limit is not None:
            del found[limit:]
        return found

    async def restore(
        self,
        service: str,
        key: str,
        *,
        version: int | None = None,
        at: datetime | None = None,
        expected_version: int | None = None,
    ) -> int:
        """Put object (or workflow) ``service``/``key`` back to the state it had at
        ``version`` (or at the time ``at``, a timezone-aware datetime), as a new commit: under
        the object's lease like any session, so a running handler never sees half a restore,
        and with an entry of its own (origin "restore"), so it can be undone. Returns the
        version the restore made (the current one when nothing differs).

        The state is rebuilt from the current one by putting back the prior values the
        history entries newer than the target hold. Further back than the log reaches is a
        :class:`~restate_redis.errors.HistoryNotKeptError` that says how far back it goes.
        Keys with an expiry of their own come back without it. ``expected_version``: refuse
        (:class:`~restate_redis.errors.VersionConflictError`, nothing written) unless the
        object is still at that version (the one its user looked at).
        """
        if (version is None) == (at is None):
            raise InvalidOptionError("restore needs exactly one of version= and at=")
        if version is not None:
            _non_negative(version, "version")
        if at is not None and (not isinstance(at, datetime) or at.tzinfo is None):
            raise InvalidOptionError(f"at must be a timezone-aware datetime, got {at!r}")
        return await self._restore(service, key, version, at, expected_version, back=False)

    async def undo(self, service: str, key: str, *, expected_version: int | None = None) -> int:
        """Restore object ``service``/``key`` to the version before its last commit (see
        :meth:`restore`); undoing a restore (or an undo) goes back to the state before it.
        Returns the version the undo made. ``expected_version``: as for :meth:`restore`."""
        return await self._restore(service, key, None, None, expected_version, back=True)

    async def _restore(
        self,
        service: str,
        key: str,
        version: int | None,
        at: datetime | None,
        expected_version: int | None,
        *,
        back: bool,
    ) -> int:
        check_key(check_service(service), key)
        keys = self.keyspace.object_keys(service, key)
        what = where(service, key)
        # A completed workflow's (or a ttl object's) keys expire: the restore keeps the time
        # they have left, as the CLI's edits do.
        async with redis_errors(f"reading {what}"):
            pipe = self.client.pipeline(transaction=False)
            pipe.pttl(keys.state)
            pipe.hget(keys.state, META_FIELD)
            pttl, raw_meta = await pipe.execute()
        grace = raw_meta is not None and Meta.parse(raw_meta).fading
        expire = pttl / 1000 if pttl > 0 and not grace else None
        options = self.history_options
        spec = self._history_spec(service, "restore") or follow_spec(
            "restore", options.max_entry_bytes if options else 64 * 1024
        )
        session = Session(
            self,
            "object",
            service,
            key,
            shared=False,
            state_preload=True,
            expire=expire,
            commit_id=None,
            lease_on_enter=True,
            history=spec,
        )
        async with session:
            current: dict[str, bytes] = await session.get_all(serde=_STORED)
            now = session.version
            if expected_version is not None and now != expected_version:
                raise VersionConflictError(
                    f"{what} changed since it was read: it is at version {now}, the restore "
                    f"expected version {expected_version}; nothing was written"
                )
            async with redis_errors(f"reading {what}"):
                raw: bytes | None = await self.client.hget(keys.state, META_FIELD)  # type: ignore[assignment]
            last = Meta.parse(raw).commit
            if back:
                if now == 0:
                    raise UnknownObjectError(f"{what} has no commit to undo")
                version = now - 1
            if version is not None and version > now:
                raise InvalidOptionError(
                    f"cannot restore {what} to version {version}: it is at version {now}"
                )
            seen: list[HistoryEntry] = []
            async for entry in self._entries(service, key):
                seen.append(entry)
                if version is not None and entry.prior_version <= version:
                    break  # the entry that left the version asked for
                if at is not None and entry.at <= at:
                    break
            if back and seen and seen[0].version == now:
                version = seen[0].prior_version  # undo the last entry (an import keeps the
                # version of its record: the version before it is the one it replaced)
            run, earliest = reach(seen, now, last)
            wanted = f"version {version}" if at is None else f"the time {at.isoformat()}"
            if at is not None:
                version = version_at(seen, at)
                if version is None:
                    raise not_kept(service, key, wanted, earliest, run, now)
            assert version is not None
            if version < earliest:
                raise not_kept(service, key, wanted, earliest, run, now)
            restored = rebuild(current, run, version)
            for name in current:
                if name not in restored:
                    session.clear(name)
            for name, buf in restored.items():
                if current.get(name) != buf:
                    session.set(name, buf, serde=_STORED)
        return session.version

    async def watch(
        self, service: str, key: str, since_version: int | None = None
    ) -> AsyncIterator[HistoryEntry]:
        """The history entries of object ``service``/``key`` as they are committed, for as
        long as the iteration goes on (``async for entry in store.watch(...)``).

        ``since_version``: first the entries after that version the log still keeps, then the
        new ones; without it, only commits from now on. Each read continues after the last
        entry it returned (by its stream id), so a reconnect (a lost connection, a failover)
        neither loses nor repeats an entry. Needs the store's ``history`` option on for the
        object (commits without it make no entry to watch).
        """
        since = None if since_version is None else {(service, key): since_version}
        async for entry in self.watch_many([(service, key)], since):
            yield entry

    async def watch_many(
        self,
        objects: Iterable[tuple[str, str]],
        since_versions: Mapping[tuple[str, str], int] | None = None,
    ) -> AsyncIterator[HistoryEntry]:
        """:meth:`watch` on several objects at once: ``objects`` is (service, key) pairs,
        ``since_versions`` maps some of them to the version to resume after. Entries of one
        object come in order; each names its ``service`` and ``key``. One blocking read per
        Redis Cluster slot (one in all on a single server)."""
        targets: dict[str, tuple[str, str]] = {}
        for service, key in objects:
            check_key(check_service(service), key)
            targets[self.keyspace.object_keys(service, key).history] = (service, key)
        if not targets:
            raise InvalidOptionError("watch_many needs at least one (service, key)")
        since = dict(since_versions or {})
        for pair, version in since.items():
            _non_negative(version, f"since_versions[{pair!r}]")
        positions: dict[str, str] = {}
        for stream, (service, key) in targets.items():
            what = where(service, key)
            after = since.get((service, key))
            if after is None:
                positions[stream] = await self.timeline.newest_id(stream, what)
                continue
            # the newest id first: an entry committed while the backlog is read is in it, or
            # after that id (the id read after the backlog could skip it)
            newest = await self.timeline.newest_id(stream, what)
            backlog = await self.history(service, key, since_version=after)
            for entry in backlog:
                yield entry
            positions[stream] = backlog[-1].entry_id if backlog else newest
        groups: dict[int, dict[str, str]] = {}
        for stream, position in positions.items():
            slot = self.client.keyslot(stream) if self.is_cluster else 0  # type: ignore[union-attr]
            groups.setdefault(slot, {})[stream] = position
        if len(groups) == 1:
            (group,) = groups.values()
            async for entry in self._follow(group, targets):
                yield entry
            return
        queue: asyncio.Queue[HistoryEntry | BaseException] = asyncio.Queue(maxsize=1000)

        async def pump(group: dict[str, str]) -> None:
            try:
                async for entry in self._follow(group, targets):
                    await queue.put(entry)
            except BaseException as exc:
                await queue.put(exc)
                raise

        tasks = [asyncio.create_task(pump(group)) for group in groups.values()]
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task

    async def _follow(
        self, positions: dict[str, str], targets: Mapping[str, tuple[str, str]]
    ) -> AsyncIterator[HistoryEntry]:
        """New entries of the streams of one slot, from ``positions`` on, forever."""
        decoders = {stream: self._decoder(*targets[stream]) for stream in positions}
        first = next(iter(positions))
        what = where(*targets[first]) + (
            f" and {len(positions) - 1} more" if len(positions) > 1 else ""
        )
        while True:
            for stream, rows in await self.timeline.after(positions, what):
                service, key = targets[stream]
                for entry_id, fields in rows:
                    entry = parse_entry(service, key, entry_id, fields, decoders[stream])
                    positions[stream] = entry.entry_id
                    yield entry

    async def purge(self, service: str, key: str) -> bool:
        """Remove object (or workflow) ``service``/``key`` entirely: its state and its
        bookkeeping (version, workflow status, replay records), under its lease, so that the
        key can be used afresh (a completed workflow can run again). True when anything was
        stored. Like Restate's ``invocation purge``; ``restate-redis kv purge`` on the shell."""
        async with self.object(service, key, state_preload=False) as session:
            session.purge()
        return session.purged

    # -- whole objects: export and import ---------------------------------------------------------

    def export_objects(
        self,
        services: Iterable[str] | None = None,
        *,
        concurrency: int = 64,
        history: bool = False,
    ) -> ObjectExport:
        """Every object and workflow of the namespace (of ``services``, when given) as
        :class:`~restate_redis.ObjectRecord`: ``async for record in store.export_objects():``.

        Each record is read at one instant by one script (dump.lua), so it is never half a
        commit; an object with more state keys than ``eager_state_field_limit`` is read in
        pages under its lease instead (a running handler finishes first). The objects are
        found by SCAN on every master of a cluster, about 500 at a time, and read
        ``concurrency`` at a time; an object may come a second time when SCAN returns it
        twice (an import of both is still right). Keys restate-redis did not write are
        skipped and counted in the export's ``skipped``. ``history``: each record carries the
        object's history entries as stored (those up to its version: an entry committed
        after the state was read is left out), so an import keeps them.
        """
        names = None if services is None else [check_service(name) for name in services]
        return ObjectExport(self, names, _positive_int(concurrency, "concurrency"), history)

    async def export_object(
        self, service: str, key: str, *, history: bool = False
    ) -> ObjectRecord | None:
        """One object or workflow as a record (see :meth:`export_objects`), or None when it
        has no state and is no workflow."""
        return await self._export_one(check_service(service), check_key(service, key), history)

    async def _export_one(
        self, service: str, key: str, history: bool = False
    ) -> ObjectRecord | None:
        keys = self.keyspace.object_keys(service, key)
        async with redis_errors(f"exporting {where(service, key)}"):
            dumped = await exchange.dump(self.backend, keys)
        if isinstance(dumped, exchange.TooLarge):
            record = await self._export_paged(service, key)
        elif isinstance(dumped, Refusal):
            raise _refused(dumped, service, key)
        else:
            record = None if dumped is None else dumped.record(service, key)
        if record is None or not history:
            return record
        async with redis_errors(f"exporting the history of {where(service, key)}"):
            rows = await exchange.history_rows(self.client, keys, record.version)
        return dataclasses.replace(record, history=rows)

    async def _export_paged(self, service: str, key: str) -> ObjectRecord | None:
        """A large object, page by page under its lease (so that the pages see one state)."""
        keys = self.keyspace.object_keys(service, key)
        got: exchange.Dumped | None = None
        async with self.object(service, key, state_preload=False, lease_on_enter=True):
            cursor = "0"
            while True:
                async with redis_errors(f"exporting {where(service, key)}"):
                    page = await exchange.dump(self.backend, keys, cursor=cursor)
                if page is None:
                    return None
                if isinstance(page, Refusal):
                    raise _refused(page, service, key)
                assert isinstance(page, exchange.Dumped)
                if got is None:
                    got = page
                else:
                    got.state.update(page.state)
                    got.key_ttl_ms.update(page.key_ttl_ms)
                cursor = page.cursor
                if cursor in ("0", ""):
                    break
        return got.record(service, key)

    async def import_object(
        self, record: ObjectRecord, *, on_conflict: OnConflict = "fail", dry_run: bool = False
    ) -> Imported:
        """Write ``record`` as its object, whole and atomically, under the object's lease
        (a running handler finishes first; ``acquire_timeout`` bounds the wait).

        An object the target already holds with the same version, workflow status and state
        bytes is left as it is (``unchanged``): importing the same records twice writes
        nothing the second time. For an object the target holds otherwise, ``on_conflict``
        says what to do: ``"skip"`` it, ``"overwrite"`` it, or ``"fail"``:
        :class:`~restate_redis.errors.ImportConflictError`, nothing written. ``dry_run``:
        nothing is written; the result says what would be done (``conflict`` where the
        import would raise). A written object gets a new
        last commit id, so no snapshot cached before matches it; its expiry, and each state
        key's, count from the import on; it keeps the record's version and time of change.
        """
        check_record(record)
        if on_conflict not in ON_CONFLICT:
            raise InvalidOptionError(
                f"on_conflict must be one of {', '.join(ON_CONFLICT)}, got {on_conflict!r}"
            )
        service, key = check_service(record.service), check_key(record.service, record.key)
        keys = self.keyspace.object_keys(service, key)
        commit_id = "import:" + secrets.token_hex(16)
        # an entry of origin "import" in the object's history: by the store's own limits, or
        # only into a log the object has already (as the CLI's edits)
        options = self.history_options
        history = self._history_spec(service, "import") or follow_spec(
            "import", options.max_entry_bytes if options else 64 * 1024
        )

        async def load(token: str) -> exchange.Loaded | Refusal:
            async with redis_errors(f"importing {where(service, key)}"):
                return await exchange.load(
                    self.backend,
                    keys,
                    record,
                    commit_id=commit_id,
                    on_conflict=on_conflict,
                    dry_run=dry_run,
                    token=token,
                    history=history,
                )

        loaded = await load("")
        if isinstance(loaded, Refusal) and loaded.status is Status.BUSY:
            # A session holds it: wait for the lease as a session does, then load under it.
            token = secrets.token_hex(16)
            async with self.object(
                service, key, state_preload=False, lease_on_enter=True, lease_token=token
            ):
                loaded = await load(token)
        if isinstance(loaded, Refusal):
            raise _refused(loaded, service, key)
        if self.snapshots is not None and loaded.outcome in ("created", "overwritten"):
            self.snapshots.drop(keys.state)  # never matches again: only frees its room now
        if loaded.outcome == "conflict" and not dry_run:
            raise ImportConflictError(
                f"{where(service, key)} already exists in another form (version "
                f"{loaded.version}; the record has version {record.version}); nothing was "
                f"written (on_conflict='skip' or 'overwrite' to go on)"
            )
        outcome: Any = loaded.outcome
        return Imported(service, key, outcome, loaded.version)

    async def import_objects(
        self,
        records: Iterable[ObjectRecord] | AsyncIterable[ObjectRecord],
        *,
        on_conflict: OnConflict = "fail",
        dry_run: bool = False,
        concurrency: int = 64,
        on_imported: Callable[[Imported], None] | None = None,
    ) -> ImportReport:
        """Import ``records`` (from :meth:`export_objects`, or an export file read with
        :func:`restate_redis.records.read_lines`), each object as :meth:`import_object`
        does, ``concurrency`` at a time; what was done, counted by outcome.

        ``on_imported`` is called with each object's result as it lands. The first error
        (an :class:`~restate_redis.errors.ImportConflictError` with ``on_conflict="fail"``, a
        key of the wrong type) stops the import: no further object is started, the ones
        already applied stay applied (each is whole), and running it again after the fix
        goes on where it stopped (what was imported is then unchanged).
        """
        limit = _positive_int(concurrency, "concurrency")
        report = ImportReport(dry_run=dry_run)

        def done(result: Imported) -> None:
            report.add(result.outcome)
            if on_imported is not None:
                on_imported(result)

        async def one(record: ObjectRecord) -> None:
            done(await self.import_object(record, on_conflict=on_conflict, dry_run=dry_run))

        await bounded(_aiter(records), one, limit)
        return report

    async def aclose(self) -> None:
        """Close the store's own connection, and the client if this store created it."""
        await self.backend.aclose()
        if self._owns_client:
            await self.client.aclose()

    async def __aenter__(self) -> RedisStateStore:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()


class ObjectExport:
    """An export under way (:meth:`RedisStateStore.export_objects`): iterate it with
    ``async for`` for the records; ``skipped`` counts the keys it left out (restate-redis did
    not write them) and ``exported`` the records so far."""

    def __init__(
        self,
        store: RedisStateStore,
        services: list[str] | None,
        concurrency: int,
        history: bool = False,
    ):
        self.store = store
        self.history = history
        self.services = services
        self.concurrency = concurrency
        self.skipped = SkippedKeys()
        self.exported = 0

    def __aiter__(self) -> AsyncIterator[ObjectRecord]:
        return self._records()

    async def _records(self) -> AsyncIterator[ObjectRecord]:
        store = self.store
        found = exchange.find_objects(store.client, store.keyspace, self.services, self.skipped)
        while True:
            async with redis_errors(
                f"listing the objects of namespace {store.keyspace.namespace!r}"
            ):
                batch = await anext(found, None)
            if batch is None:
                return
            results: list[ObjectRecord | None] = [None] * len(batch)

            async def one(
                item: tuple[int, tuple[str, str]], results: list[ObjectRecord | None] = results
            ) -> None:
                index, (service, key) = item
                results[index] = await store._export_one(service, key, self.history)

            await bounded(_aiter(enumerate(batch)), one, self.concurrency)
            for record in results:
                if record is not None:
                    self.exported += 1
                    yield record


_T = TypeVar("_T")


async def _aiter(items: Iterable[_T] | AsyncIterable[_T]) -> AsyncIterator[_T]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


def _refused(refused: Refusal, service: str, key: str) -> Exception:
    """The error a refusal of dump.lua or load.lua stands for."""
    what = where(service, key)
    if refused.status is Status.WRONG_TYPE:
        return WrongTypeError(
            f"{what}: the Redis key {refused.where!r} holds a {refused.found}, not what "
            f"restate-redis writes there; nothing was written"
        )
    if refused.status is Status.CORRUPT:
        return CorruptStateError(
            f"{what}: its bookkeeping field {refused.found!r} holds {refused.where}, which "
            f"does not parse; nothing was written"
        )
    if refused.status is Status.NO_FIELD_EXPIRY:
        return ServerFeatureError(
            f"{what} has state keys with an expiry of their own, which {refused.found} cannot "
            f"keep (hash-field expiry: Redis 7.4+ or Valkey 9+; the server said: "
            f"{refused.where}); nothing was written"
        )
    if refused.status is Status.LEASE_LOST:
        return LeaseLostError(
            f"the lease of {what} was lost during the import; nothing was written"
        )
    return CorruptStateError(f"{what}: unexpected reply {refused}")
