"""The protocol of a session with Redis: the open (take the lease, read what the mode needs),
the commit (apply every write and release, atomically) and the purge, each one script, their
arguments built and their replies acted on here."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any

from ..backend import replies
from ..backend.replies import Opened, Status
from ..errors import CommitError, LeaseTimeoutError, StateError, WorkflowCompletedError
from ..keyspace import EMPTY_GRACE_SECONDS
from .lease import Lease
from .target import Mode, Target
from .writes import WriteBuffer


@dataclass(slots=True)
class Options:
    """What a session asks of the open and the commit."""

    mode: Mode
    preload: tuple[str, ...]
    run: bool
    """A workflow's run session: refused for a completed workflow, marks it completed."""
    commit_id: str | None
    """The caller's commit id (a replay is recognised by it)."""
    commit_tag: str
    """The id every exclusive commit carries: the caller's, or a random one."""
    record_prior: bool
    expire: float | None


def refused_error(target: Target, lease: Lease, refused: replies.Refusal) -> StateError:
    """The error for a script's refusal (anything but BUSY)."""
    if refused.status is Status.WRONG_TYPE:
        return target.wrong_type(refused.found, refused.where)
    if refused.status is Status.CORRUPT:
        return target.corrupt(refused.found, refused.where)
    if refused.status is Status.LEASE_LOST:
        return lease.lost_error()
    if refused.status is Status.COMPLETED:
        return WorkflowCompletedError(
            f"workflow {target.where} already completed its run; its state is kept until the "
            f"retention expires. To run it again, purge it: restate-redis kv purge "
            f"{target.service} {target.key} (or await store.purge({target.service!r}, "
            f"{target.key!r}))"
        )
    return StateError(f"unexpected reply {refused} for {target.where}")


async def open_state(target: Target, lease: Lease, options: Options) -> Opened:
    """open.lua, waiting for the lease (BLPOP on the wake list) up to acquire_timeout."""
    host, record = target.host, target.record
    args: list[Any] = [
        lease.token,
        host.lease_ttl_ms,
        options.mode,
        host.eager_state_size_limit,
        "1" if options.run else "0",
        options.commit_id or "",
        host.eager_state_field_limit,
        *options.preload,
    ]
    k = target.keys
    keys = [k.state, k.meta, k.lease, k.prev, k.old]
    started = time.monotonic()
    deadline = started + host.acquire_timeout
    while True:
        lease.maybe_taken = True  # until the reply says otherwise (it may never arrive)
        reply = await target.call("open", lambda: host.wire.script(host.scripts.open, keys, args))
        refused = replies.refusal(reply)
        if refused is None:
            break
        lease.maybe_taken = False
        if refused.status is not Status.BUSY:
            raise refused_error(target, lease, refused)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            host.telemetry.record_lease_timeout(record)
            raise LeaseTimeoutError(
                f"could not acquire the lease of {target.where} within "
                f"acquire_timeout={host.acquire_timeout:g}s: another session holds it"
            )
        wait = max(0.001, min(remaining, host.wait_slice, refused.pttl / 1000 + 0.001))
        await target.call("wait", functools.partial(host.client.blpop, [k.wake], timeout=wait))
        record.lease_wait = time.monotonic() - started  # so far, for the next open's span
    record.lease_wait = time.monotonic() - started
    return Opened.parse(reply)


async def commit(target: Target, lease: Lease, writes: WriteBuffer, options: Options) -> int:
    """commit.lua: every buffered write, atomically, and the lease released; the new version.

    A retry after a lost reply is flagged, so the script looks for its commit id among the
    recent commits: a commit that applied is recognised, never applied twice."""
    host = target.host
    if lease.lost:
        raise lease.lost_error()
    target.record.writes = writes.changes()
    flags = (
        ("c" if writes.cleared_all else "")
        + ("r" if options.record_prior else "")
        + ("w" if options.run else "")
    )
    args: list[Any] = [
        lease.token,
        options.commit_tag,
        flags,
        int(options.expire * 1000) if options.expire else 0,
        host.lease_ttl_ms,
        host.eager_state_field_limit,
        EMPTY_GRACE_SECONDS * 1000,
        *writes.script_args(),
    ]
    k = target.keys
    keys = [k.state, k.meta, k.lease, k.wake, k.prev, k.commits, k.old]
    attempts = 0

    def attempt() -> Any:
        nonlocal attempts
        attempts += 1
        if attempts == 2:  # a retry: the first attempt may have applied
            args[2] = flags + "a"
        return host.run_commit(keys, args, target.where)

    reply = await target.call("commit", attempt)
    refused = replies.refusal(reply)
    if refused is not None and refused.status is Status.LEASE_LOST and attempts > 1:
        lease.lost = True
        raise CommitError(
            f"the commit of {target.where} lost its reply and its retry found the lease gone "
            f"and the commit id not among the recent ones: it may or may not have been applied"
        )
    if refused is not None:
        raise refused_error(target, lease, refused)
    return replies.Committed.parse(reply).version


async def purge(target: Target, lease: Lease) -> bool:
    """purge.lua: the object's every key, under the lease; True when anything was stored."""
    host = target.host
    if lease.lost:
        raise lease.lost_error()
    k = target.keys
    keys = [k.state, k.meta, k.lease, k.wake, k.prev, k.commits, k.old]
    args: list[Any] = [lease.token, host.lease_ttl_ms]
    reply = await target.call("commit", lambda: host.wire.script(host.scripts.purge, keys, args))
    refused = replies.refusal(reply)
    if refused is not None:
        raise refused_error(target, lease, refused)
    return replies.Committed.parse(reply).version > 0
