"""The protocol of a session with its backend: the open (take the lease, waiting while it is
busy, and read what the mode needs), the commit (apply every write and release, atomically)
and the purge, each one round trip, their results acted on here."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence

from ..backend.engine import CommitRequest
from ..backend.replies import Committed, Opened, Refusal, Status
from ..errors import (
    CommitError,
    LeaseTimeoutError,
    ServerFeatureError,
    StateError,
    WorkflowCompletedError,
)
from .cache import Snapshot
from .lease import Lease
from .target import SessionHost, Target
from .writes import WriteBuffer


def refused_error(target: Target, lease: Lease, refused: Refusal) -> StateError:
    """The error for a script's refusal (anything but BUSY)."""
    if refused.after_retry:
        lease.lost = True
        return CommitError(
            f"the commit of {target.where} lost its reply and its retry found the lease gone "
            f"and the commit id not among the recent ones: it may or may not have been applied"
        )
    if refused.status is Status.WRONG_TYPE:
        return target.wrong_type(refused.found, refused.where)
    if refused.status is Status.CORRUPT:
        return target.corrupt(refused.found, refused.where)
    if refused.status is Status.LEASE_LOST:
        return lease.lost_error()
    if refused.status is Status.NO_FIELD_EXPIRY:
        return ServerFeatureError(
            f"the commit of {target.where} gave a state key a ttl, and {refused.found} has no "
            f"hash-field expiry (Redis 7.4+ or Valkey 9+; the server said: {refused.where}); "
            f"nothing was written"
        )
    if refused.status is Status.COMPLETED:
        service, key = target.record.service, target.record.key
        return WorkflowCompletedError(
            f"workflow {target.where} already completed its run; its state is kept until the "
            f"retention expires. To run it again, purge it: restate-redis kv purge "
            f"{service} {key} (or await store.purge({service!r}, {key!r}))"
        )
    return StateError(f"unexpected reply {refused} for {target.where}")


async def open_state(
    target: Target, lease: Lease, host: SessionHost, names: Sequence[str] = ()
) -> tuple[Opened, Snapshot | None]:
    """Open, waiting for the lease up to acquire_timeout; ``names``: the state keys a lazy
    session reads with its open. The snapshot cache's copy of the state is named, so an
    unchanged state does not cross the network again: it is returned when the open found it
    still the state."""
    snapshot = host.snapshots.get(target.keys.state) if host.snapshots is not None else None
    cached = (
        (snapshot.version, snapshot.commit_id, len(snapshot.data)) if snapshot is not None else None
    )

    def attempt() -> Awaitable[Opened | Refusal]:
        lease.maybe_taken = True  # until the reply says otherwise (it may never arrive)
        return target.backend.open(target, cached, names)

    opened = await _acquiring(target, lease, host, attempt)
    assert isinstance(opened, Opened)
    return opened, snapshot if opened.mode == "cached" else None


async def commit(
    target: Target,
    lease: Lease,
    writes: WriteBuffer,
    host: SessionHost,
    *,
    blind: bool = False,
    handoff: str = "",
) -> Committed:
    """Every buffered write, atomically, and the lease released. ``blind``: the session
    never opened (it only wrote): the commit takes the lease itself, waiting for it up to
    acquire_timeout like an open. ``handoff``: the token the lease is handed to, instead of
    released.

    A retry after a lost reply is recognised by the commit id: never applied twice."""
    if lease.lost:
        raise lease.lost_error()
    target.record.writes = writes.changes()
    request = CommitRequest(writes.script_args(), writes.cleared_all, blind, handoff)

    async def attempt() -> Committed | Refusal:
        committed = await target.backend.commit(target, request)
        refused = type(committed) is Refusal and committed.status is Status.NO_FIELD_EXPIRY
        if refused and not blind:  # nothing was written: the lease is given back first
            with contextlib.suppress(Exception):
                await lease.release()
        return committed

    committed = await _acquiring(target, lease, host, attempt)
    assert isinstance(committed, Committed)
    return committed


async def _acquiring(
    target: Target,
    lease: Lease,
    host: SessionHost,
    attempt: Callable[[], Awaitable[Opened | Committed | Refusal]],
) -> Opened | Committed:
    """``attempt()`` until it is not refused BUSY, waiting for the lease's release between
    attempts (one wait per busy reply), up to acquire_timeout; other refusals raise."""
    backend, record = target.backend, target.record
    started = time.monotonic()
    deadline = started + host.acquire_timeout
    while True:
        result = await attempt()
        if type(result) is not Refusal:
            record.lease_wait = time.monotonic() - started
            return result  # type: ignore[return-value]
        lease.maybe_taken = False
        if result.status is not Status.BUSY:
            raise refused_error(target, lease, result)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            host.telemetry.record_lease_timeout(record)
            raise LeaseTimeoutError(
                f"could not acquire the lease of {target.where} within "
                f"acquire_timeout={host.acquire_timeout:g}s: another session holds it"
            )
        await backend.wait(
            target, max(0.001, min(remaining, backend.wait_slice, result.pttl / 1000 + 0.001))
        )
        record.lease_wait = time.monotonic() - started  # so far, for the next span


async def purge(target: Target, lease: Lease) -> bool:
    """The object's every key, under the lease; True when anything was stored."""
    if lease.lost:
        raise lease.lost_error()
    purged = await target.backend.purge(target)
    if type(purged) is Committed:
        return purged.version > 0
    assert isinstance(purged, Refusal)
    raise refused_error(target, lease, purged)
