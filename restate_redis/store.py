"""RedisStateStore: how to reach Redis, the store-wide options, and where sessions come from."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from . import observe
from .backend.connection import RedisClient, connect, socket_timeout_of
from .backend.engine import RedisBackend
from .backend.retry import RetryPolicy
from .codecs import CodecChain, Compression, Encryption
from .durations import Duration, seconds
from .errors import InvalidOptionError
from .keyspace import DEFAULT_NAMESPACE, Keyspace, check_key, check_service
from .serde import MsgPackSerde, Serde
from .session import Session, StatePreload
from .session.cache import SnapshotCache
from .session.handoff import LocalLeases

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


def _positive_int(value: int, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise InvalidOptionError(f"{what} must be a positive int, got {value!r}")
    return value


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

    async def purge(self, service: str, key: str) -> bool:
        """Remove object (or workflow) ``service``/``key`` entirely: its state and its
        bookkeeping (version, workflow status, replay records), under its lease, so that the
        key can be used afresh (a completed workflow can run again). True when anything was
        stored. Like Restate's ``invocation purge``; ``restate-redis kv purge`` on the shell."""
        async with self.object(service, key, state_preload=False) as session:
            session.purge()
        return session.purged

    async def aclose(self) -> None:
        """Close the store's own connection, and the client if this store created it."""
        await self.backend.aclose()
        if self._owns_client:
            await self.client.aclose()

    async def __aenter__(self) -> RedisStateStore:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()
