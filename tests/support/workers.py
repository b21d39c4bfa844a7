"""The worker processes of the multi-process tests, and the increment workload the scale and
fault tests run in-process or in them.

Each step opens an exclusive session on one of ``objects`` counters, reads ``n``, sets
``n + 1``, sleeps a random moment and, one time in ``fail_every``, raises so that nothing is
committed. Every outcome is tallied per object:

- ``acked``: the session committed and returned normally: the increment must be in Redis;
- ``unknown``: the commit's outcome could not be confirmed (CommitError, ReplicationError);
- anything else (the handler's own error, a lease or availability error before the commit):
  nothing was committed.

Run as ``python -m tests.support.workers incr URL [options]``: prints the tally as JSON.
``python -m tests.support.workers hold URL KEY``: opens a session on KEY, buffers a write,
prints ``holding`` and waits forever (to be killed).
``python -m tests.support.workers counters URL OBJECTS COUNT SEED``: ``COUNT`` increments of
counters ``c0``... (half of the sessions with their state preloaded), each keeping a log field.
``python -m tests.support.workers big-commits URL FIELDS SIZE``: commits generation after
generation of ``FIELDS`` fields of ``SIZE`` bytes, printing each generation's number.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from restate_redis import CommitError, RedisStateStore, StateError

SERVICE = "Counter"
ROOT = Path(__file__).resolve().parents[2]


class HandlerFailed(Exception):
    """The deliberate failure of one handler in ``fail_every``."""


@dataclass
class Tally:
    acked: Counter[str] = field(default_factory=Counter)
    unknown: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    lease_waits: list[float] = field(default_factory=list)

    def add(self, other: Tally) -> None:
        self.acked.update(other.acked)
        self.unknown.update(other.unknown)
        self.errors.update(other.errors)
        self.lease_waits += other.lease_waits

    def to_json(self) -> dict[str, Any]:
        return {
            "acked": self.acked,
            "unknown": self.unknown,
            "errors": self.errors,
            "lease_waits": self.lease_waits,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Tally:
        return cls(
            Counter(data["acked"]),
            Counter(data["unknown"]),
            Counter(data["errors"]),
            list(data["lease_waits"]),
        )


def object_keys(n: int) -> list[str]:
    return [f"obj-{i}" for i in range(n)]


async def increment(
    store: RedisStateStore,
    key: str,
    rng: random.Random,
    tally: Tally,
    *,
    fail_every: int = 0,
    max_delay: float = 0.0,
) -> None:
    """One handler run on ``key``; its outcome is added to ``tally``."""
    try:
        async with store.object(SERVICE, key) as s:
            tally.lease_waits.append(s.lease_wait)
            n = await s.get("n") or 0
            s.set("n", n + 1)
            if max_delay:
                await asyncio.sleep(rng.uniform(0, max_delay))
            if fail_every and rng.randrange(fail_every) == 0:
                raise HandlerFailed
    except HandlerFailed:
        tally.errors["HandlerFailed"] += 1
    except CommitError as exc:  # includes ReplicationError
        tally.unknown[key] += 1
        tally.errors[type(exc).__name__] += 1
    except StateError as exc:
        tally.errors[type(exc).__name__] += 1
    else:
        tally.acked[key] += 1


async def run_increments(
    store: RedisStateStore,
    keys: list[str],
    count: int,
    *,
    seed: int,
    tasks: int = 1,
    fail_every: int = 0,
    max_delay: float = 0.0,
    stop: asyncio.Event | None = None,
) -> Tally:
    """``tasks`` concurrent loops doing ``count`` increments in all on random ``keys``."""
    tally = Tally()
    remaining = count

    async def loop(i: int) -> None:
        nonlocal remaining
        rng = random.Random(seed * 1000 + i)
        while remaining > 0 and not (stop and stop.is_set()):
            remaining -= 1
            key = rng.choice(keys)
            await increment(store, key, rng, tally, fail_every=fail_every, max_delay=max_delay)

    await asyncio.gather(*(loop(i) for i in range(tasks)))
    return tally


async def read_counts(store: RedisStateStore, keys: list[str]) -> dict[str, int]:
    counts = {}
    for key in keys:
        async with store.object(SERVICE, key, shared=True) as s:
            counts[key] = await s.get("n") or 0
    return counts


class Workers:
    """Worker processes running this module; ``stop()`` kills every one still alive by pid."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, *args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.workers", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs.append(proc)
        return proc

    def collect(self, timeout: float = 120.0) -> Tally:
        """Wait for every worker; the sum of their tallies (a failed worker fails the test)."""
        total = Tally()
        for proc in self.procs:
            out, err = proc.communicate(timeout=timeout)
            if proc.returncode != 0:
                raise AssertionError(f"worker {proc.pid} exited {proc.returncode}:\n{err}")
            total.add(Tally.from_json(json.loads(out.strip().splitlines()[-1])))
        return total

    def finish(self) -> None:
        """Ask every worker to stop after its current increments (SIGTERM)."""
        for proc in self.procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def _store(args: argparse.Namespace) -> RedisStateStore:
    return RedisStateStore.from_url(
        args.url,
        lease_ttl=args.lease_ttl,
        acquire_timeout=args.acquire_timeout,
        retry_timeout=args.retry_timeout,
        retry_attempts=args.retry_attempts,
        min_replicas=args.min_replicas,
        replica_timeout=args.replica_timeout,
    )


async def counters(url: str, objects: int, count: int, seed: int) -> None:
    """``count`` exclusive read-modify-write increments spread over ``objects`` counters."""
    rng = random.Random(seed)
    async with RedisStateStore.from_url(url, lease_ttl=5, acquire_timeout=60) as store:
        for _ in range(count):
            key = f"c{rng.randrange(objects)}"
            async with store.object(SERVICE, key, state_preload=rng.random() < 0.5) as ctx:
                n = await ctx.get("n", type_hint=int) or 0
                ctx.set("n", n + 1)
                ctx.set("log", [*(await ctx.get("log") or [])[-9:], seed])


async def big_commits(url: str, fields: int, size: int) -> None:
    """Commit generation after generation: every field of a generation holds the same value."""
    async with RedisStateStore.from_url(url) as store:
        gen = 0
        while True:
            gen += 1
            async with store.object("Atomic", "obj") as ctx:
                ctx.clear_all()
                for i in range(fields):
                    ctx.set(f"f{i}", f"{gen}:".encode() + b"x" * size)
            print(gen, flush=True)


async def _main(args: argparse.Namespace) -> None:
    if args.command == "counters":
        await counters(args.url, args.objects, args.count, args.seed)
        return
    if args.command == "big-commits":
        await big_commits(args.url, args.fields, args.size)
        return
    async with _store(args) as store:
        if args.command == "hold":
            async with store.object(SERVICE, args.key) as s:
                s.set("n", -1)
                s.set("partial", "never committed")
                print("holding", flush=True)
                await asyncio.Event().wait()
            return
        stop = asyncio.Event()  # SIGTERM: finish the current increments, print the tally
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        tally = await run_increments(
            store,
            object_keys(args.objects),
            args.count,
            seed=args.seed,
            tasks=args.tasks,
            fail_every=args.fail_every,
            max_delay=args.max_delay,
            stop=stop,
        )

        print(json.dumps(tally.to_json()), flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m tests.support.workers")
    commands = p.add_subparsers(dest="command", required=True)
    incr = commands.add_parser("incr", help="the increment workload; prints its tally")
    hold = commands.add_parser("hold", help="hold a session with a buffered write")
    for sub in (incr, hold):
        sub.add_argument("url")
        sub.add_argument("--lease-ttl", type=float, default=2.0)
        sub.add_argument("--acquire-timeout", type=float, default=30.0)
        sub.add_argument("--retry-timeout", type=float, default=15.0)
        sub.add_argument("--retry-attempts", type=int, default=50)
        sub.add_argument("--min-replicas", type=int, default=0)
        sub.add_argument("--replica-timeout", type=float, default=1.0)
    hold.add_argument("key", nargs="?", default="obj-0")
    incr.add_argument("--objects", type=int, default=20)
    incr.add_argument("--count", type=int, default=500)
    incr.add_argument("--tasks", type=int, default=4)
    incr.add_argument("--seed", type=int, default=1)
    incr.add_argument("--fail-every", type=int, default=10)
    incr.add_argument("--max-delay", type=float, default=0.002)
    seeded = commands.add_parser("counters", help="increments of counters c0... with a log")
    seeded.add_argument("url")
    seeded.add_argument("objects", type=int)
    seeded.add_argument("count", type=int)
    seeded.add_argument("seed", type=int)
    big = commands.add_parser("big-commits", help="big commits until killed")
    big.add_argument("url")
    big.add_argument("fields", type=int)
    big.add_argument("size", type=int)
    asyncio.run(_main(p.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
