"""The protocol of a session with its backend: the open (take the lease, waiting while it is
busy, and read what the mode needs), the commit (apply every write and release, atomically)
and the purge, each one round trip, their results acted on here."""

from __future__ import annotations

import contextlib
import time

from ..backend.replies import Committed, Opened, Refusal, Status
from ..errors import (
    CommitError,
    LeaseTimeoutError,
    ServerFeatureError,
    StateError,
    WorkflowCompletedError,
)
from .lease import Lease
from .target import SessionHost, Target
from .writes import WriteBuffer


def refused_error(target: Target, lease: Lease, refused: Refusal) -> StateError:
    """The error for a script's refusal (anything but BUSY)."""
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


async def open_state(target: Target, lease: Lease, host: SessionHost) -> Opened:
    """Open, waiting for the lease (one wait per busy reply) up to acquire_timeout."""
    backend, record = target.backend, target.record
    started = time.monotonic()
    deadline = started + host.acquire_timeout
    while True:
        lease.maybe_taken = True  # until the reply says otherwise (it may never arrive)
        opened = await backend.open(target)
        if type(opened) is Opened:
            break
        assert isinstance(opened, Refusal)
        lease.maybe_taken = False
        if opened.status is not Status.BUSY:
            raise refused_error(target, lease, opened)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            host.telemetry.record_lease_timeout(record)
            raise LeaseTimeoutError(
                f"could not acquire the lease of {target.where} within "
                f"acquire_timeout={host.acquire_timeout:g}s: another session holds it"
            )
        await backend.wait(
            target, max(0.001, min(remaining, backend.wait_slice, opened.pttl / 1000 + 0.001))
        )
        record.lease_wait = time.monotonic() - started  # so far, for the next open's span
    record.lease_wait = time.monotonic() - started
    return opened


async def commit(target: Target, lease: Lease, writes: WriteBuffer) -> int:
    """Every buffered write, atomically, and the lease released; the new version.

    A retry after a lost reply is recognised by the commit id: never applied twice."""
    if lease.lost:
        raise lease.lost_error()
    target.record.writes = writes.changes()
    committed = await target.backend.commit(
        target, writes.script_args(), cleared_all=writes.cleared_all
    )
    if type(committed) is Committed:
        return committed.version
    assert isinstance(committed, Refusal)
    if committed.status is Status.NO_FIELD_EXPIRY:  # nothing written: free the lease now
        with contextlib.suppress(Exception):
            await lease.release()
    if committed.after_retry:
        lease.lost = True
        raise CommitError(
            f"the commit of {target.where} lost its reply and its retry found the lease gone "
            f"and the commit id not among the recent ones: it may or may not have been applied"
        )
    raise refused_error(target, lease, committed)


async def purge(target: Target, lease: Lease) -> bool:
    """The object's every key, under the lease; True when anything was stored."""
    if lease.lost:
        raise lease.lost_error()
    purged = await target.backend.purge(target)
    if type(purged) is Committed:
        return purged.version > 0
    assert isinstance(purged, Refusal)
    raise refused_error(target, lease, purged)
