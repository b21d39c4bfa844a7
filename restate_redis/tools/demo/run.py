"""``restate-redis demo``: the example services under contention, then a check that no update was
lost.

Worker processes run the shopping cart Virtual Object and the order fulfilment Workflow
(:mod:`restate_redis.tools.demo.examples`) against one Redis: the embedded Valkey server by
default, or ``--url``. No Restate server runs: the workers call the handlers directly. Every
invocation is drawn up front from a seeded plan; each worker reports what its handlers did, and
the final state in Redis must be exactly what those invocations imply. ``--restate`` runs the
same services as restate-sdk handlers under a real restate-server
(:mod:`restate_redis.tools.demo.restate`) with the same plan and check.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import multiprocessing as mp
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import click

from ...backend.connection import redact
from ...store import RedisStateStore
from .examples import cart, fulfilment

SKUS = ("apple", "bread", "cheese", "dates", "eggs")
# Share of each handler in the plan: mostly exclusive writes, some shared reads and checkouts.
MIX = (("add", 50), ("remove", 20), ("view", 20), ("checkout", 10))

Invocation = tuple[str, str, str, int]  # handler, cart key, sku, quantity


@dataclass
class WorkerReport:
    """What one worker's handlers did, returned to the parent for the check."""

    exclusive: Counter[str] = field(default_factory=Counter)  # cart -> exclusive invocations
    added: Counter[tuple[str, str]] = field(default_factory=Counter)  # (cart, sku) -> qty
    removed: Counter[tuple[str, str]] = field(default_factory=Counter)
    orders: dict[str, tuple[str, dict[str, int]]] = field(default_factory=dict)  # id -> cart, items
    latency: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: list[str] = field(default_factory=list)
    lease_wait: float = 0.0


def make_plan(run_id: str, invocations: int, objects: int, seed: int) -> list[Invocation]:
    """The invocations of one run, drawn from a seeded random mix over ``objects`` carts."""
    rng = random.Random(seed)
    names = [name for name, _ in MIX]
    weights = [w for _, w in MIX]
    carts = [f"cart-{run_id}-{i}" for i in range(objects)]
    return [
        (rng.choices(names, weights)[0], rng.choice(carts), rng.choice(SKUS), rng.randint(1, 3))
        for _ in range(invocations)
    ]


# -- the worker processes ----------------------------------------------------------------------

_progress: Any = None  # shared counter of finished invocations
_ready: Any = None  # shared counter of workers connected and waiting for the start
_go: Any = None  # event: all workers ready, start now


def _init_worker(progress: Any, ready: Any, go: Any, parent: int) -> None:
    global _progress, _ready, _go
    _progress, _ready, _go = progress, ready, go
    _die_with_parent(parent)


def _die_with_parent(parent: int) -> None:
    """On Linux, a worker is sent SIGTERM when the demo process ends, however it ends (a
    worker waiting for the start signal would otherwise wait forever)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it was already gone
        os._exit(1)


def run_worker(url: str, plan: list[Invocation], concurrency: int, retention: float) -> Any:
    """Run a share of the plan in this process; returns a :class:`WorkerReport`."""
    return asyncio.run(_worker(url, plan, concurrency, retention))


async def _worker(
    url: str, plan: list[Invocation], concurrency: int, retention: float
) -> WorkerReport:
    report = WorkerReport()
    store = RedisStateStore.from_url(url, lease_ttl=10, acquire_timeout=60)
    try:
        await store.client.ping()
        with _ready.get_lock():
            _ready.value += 1
        # Wait for every worker, so the measured time is the time they all ran together.
        await asyncio.to_thread(_go.wait, 120)
        todo = iter(plan)

        async def loop() -> None:
            for handler, key, sku, qty in todo:
                started = time.perf_counter()
                try:
                    await _invoke(store, report, handler, key, sku, qty, retention)
                except Exception as exc:
                    report.errors.append(f"{handler} {key}: {type(exc).__name__}: {exc}")
                report.latency[handler].append(time.perf_counter() - started)
                with _progress.get_lock():
                    _progress.value += 1

        await asyncio.gather(*(loop() for _ in range(concurrency)))
    finally:
        await store.aclose()
    report.latency = dict(report.latency)
    return report


async def _invoke(
    store: RedisStateStore,
    report: WorkerReport,
    handler: str,
    key: str,
    sku: str,
    qty: int,
    retention: float,
) -> None:
    if handler == "view":
        await cart.view(store, key)
        return
    if handler == "add":
        await cart.add_item(store, key, sku, qty)
        report.added[key, sku] += qty
    elif handler == "remove":
        removed = await cart.remove_item(store, key, sku, qty)  # not in the +=: it reads first
        report.removed[key, sku] += removed
    else:
        order = await cart.checkout(store, key, retention)
        if order.order_id is not None:
            report.orders[order.order_id] = (key, order.items)
    report.exclusive[key] += 1


# -- the check ---------------------------------------------------------------------------------


def merge(reports: list[WorkerReport]) -> WorkerReport:
    """One report for the whole run."""
    total = WorkerReport()
    for r in reports:
        total.exclusive.update(r.exclusive)
        total.added.update(r.added)
        total.removed.update(r.removed)
        total.orders.update(r.orders)
        for handler, values in r.latency.items():
            total.latency[handler].extend(values)
        total.errors.extend(r.errors)
    return total


async def check(
    store: RedisStateStore, carts: list[str], report: WorkerReport
) -> tuple[list[str], int]:
    """Compare Redis with what the invocations imply; returns (problems, workflows checked)."""
    problems: list[str] = []
    ordered: Counter[tuple[str, str]] = Counter()
    by_cart: dict[str, list[str]] = defaultdict(list)
    for order_id, (key, items) in report.orders.items():
        by_cart[key].append(order_id)
        for sku, qty in items.items():
            ordered[key, sku] += qty
    for key in carts:
        async with store.object(cart.SERVICE, key, shared=True) as ctx:
            ops = await ctx.get("ops") or 0
            items = await ctx.get("items") or {}
            orders = await ctx.get("orders") or []
        if ops != report.exclusive[key]:
            problems.append(
                f"{cart.SERVICE}/{key}: ops is {ops}, but {report.exclusive[key]} exclusive "
                f"invocations ran (lost updates: {report.exclusive[key] - ops})"
            )
        expected = {
            sku: report.added[key, sku] - report.removed[key, sku] - ordered[key, sku]
            for sku in SKUS
        }
        expected = {sku: qty for sku, qty in expected.items() if qty}
        if items != expected:
            problems.append(f"{cart.SERVICE}/{key}: items are {items}, expected {expected}")
        if sorted(orders) != sorted(by_cart[key]):
            problems.append(
                f"{cart.SERVICE}/{key}: orders are {orders}, checkouts returned {by_cart[key]}"
            )
    for order_id, (key, items) in report.orders.items():
        state = await fulfilment.status(store, order_id)
        want = {
            "cart": key,
            "items": items,
            "steps": list(fulfilment.STEPS),
            "status": "shipped",
            "workflow": "completed",
        }
        if state != want:
            problems.append(f"{fulfilment.SERVICE}/{order_id}: state {state}, expected {want}")
        ttl = await store.client.pttl(
            store.keyspace.object_keys(fulfilment.SERVICE, order_id).state
        )
        if ttl <= 0:
            problems.append(f"{fulfilment.SERVICE}/{order_id}: no retention (PTTL {ttl})")
    return problems, len(report.orders)


# -- the command -------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def _split(plan: list[Invocation], workers: int) -> list[list[Invocation]]:
    return [plan[i::workers] for i in range(workers)]


def run_workers(
    url: str,
    plan: list[Invocation],
    workers: int,
    concurrency: int,
    retention: float,
    console: Any,
) -> tuple[list[WorkerReport], float]:
    """Run the plan in ``workers`` processes calling the handlers directly, ``concurrency``
    invocations in flight in each; their reports and the time from the start signal."""
    ctx = mp.get_context("spawn")  # no inherited event loop, sockets or threads
    progress, ready, go = ctx.Value("l", 0), ctx.Value("i", 0), ctx.Event()
    with ProcessPoolExecutor(
        workers,
        mp_context=ctx,
        initializer=_init_worker,
        initargs=(progress, ready, go, os.getpid()),
    ) as pool:
        futures: list[Future[WorkerReport]] = [
            pool.submit(run_worker, url, share, concurrency, retention)
            for share in _split(plan, workers)
        ]
        deadline = time.monotonic() + 60
        while ready.value < workers:
            failed = [f for f in futures if f.done()]
            if failed:
                failed[0].result()  # raises the worker's error
            if time.monotonic() > deadline:
                raise click.ClickException("the worker processes did not start within 60 s")
            time.sleep(0.01)
        started = time.perf_counter()
        go.set()
        with progress_bar(console, len(plan)) as update:
            while not all(f.done() for f in futures):
                update(progress.value)
                time.sleep(0.05)
            update(progress.value)
        elapsed = time.perf_counter() - started
        return [f.result() for f in futures], elapsed


@contextlib.contextmanager
def progress_bar(console: Any, total: int) -> Iterator[Callable[..., None]]:
    """A bar of finished invocations; yields ``update(completed=None)`` (None: one more)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("invocations", total=total)

        def update(completed: int | None = None) -> None:
            if completed is None:
                bar.advance(task)
            else:
                bar.update(task, completed=completed)

        yield update


def latency_table(report: WorkerReport, elapsed: float, total: int) -> Any:
    """The rich table of latencies per handler, and of the run's throughput."""
    from rich.table import Table

    table = Table(title=f"{total} invocations in {elapsed:.2f} s: {total / elapsed:,.0f} per s")
    for col in ("handler", "session", "count", "p50 ms", "p99 ms"):
        table.add_column(col, justify="left" if col in ("handler", "session") else "right")
    kinds = {"add": "exclusive", "remove": "exclusive", "checkout": "exclusive + workflow"}
    everything: list[float] = []
    for handler, _ in MIX:
        values = report.latency.get(handler, [])
        everything += values
        if values:
            table.add_row(
                f"{cart.SERVICE}.{handler}",
                kinds.get(handler, "shared"),
                str(len(values)),
                f"{percentile(values, 0.5) * 1000:.2f}",
                f"{percentile(values, 0.99) * 1000:.2f}",
            )
    table.add_row(
        "all",
        "",
        str(len(everything)),
        f"{percentile(everything, 0.5) * 1000:.2f}",
        f"{percentile(everything, 0.99) * 1000:.2f}",
        style="bold",
    )
    return table


async def ping(url: str) -> None:
    """Fail (as the store would) when the Redis at ``url`` cannot be used."""
    async with RedisStateStore.from_url(url, socket_connect_timeout=5) as store:
        await store.client.ping()


async def check_at(url: str, carts: list[str], report: WorkerReport) -> tuple[list[str], int]:
    """:func:`check` on a store of its own at ``url``."""
    async with RedisStateStore.from_url(url) as store:
        return await check(store, carts, report)


def serve_ui(url: str, console: Any) -> None:
    """Run ``restate-redis ui`` for ``url`` until Ctrl-C, then stop it by its pid."""
    console.print(f"Starting the UI: [bold]restate-redis ui --url {redact(url)}[/] (Ctrl-C stops)")
    proc = subprocess.Popen([sys.executable, "-m", "restate_redis.tools.cli", "ui", "--url", url])
    # Ctrl-C must stop us even when started with SIGINT ignored (a background job).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code = proc.wait()
        console.print(f"[red]the UI exited with status {code}[/]; the server stays up until Ctrl-C")
        while True:
            time.sleep(3600)
    except (KeyboardInterrupt, SystemExit):
        console.print("stopping")
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
