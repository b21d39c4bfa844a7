"""Latency through Restate: native state versus Redis state, small and large.

    python -m examples.latency                     # starts Redis, Restate and the example
    python -m examples.latency --ingress http://127.0.0.1:8080   # an example already running

Without ``--ingress`` it runs from a checkout with the dev extra installed: a Redis server on
a free port, restate-server from npm with its data on tmpfs where there is one (both started
by ``restate_redis.tools.stack``, as in the test suite), and
``hypercorn examples.service:app`` with ``examples/hypercorn.toml``; everything stops at the
end.

It calls ``POST /NativeCounter/<key>/add``, ``/PingCounter/<key>/add`` (the same plus two
plain Redis PINGs: the floor of any state kept outside Restate) and ``/Counter/<key>/add``
through the ingress over keep-alive HTTP/1.1 (aiohttp: httpx's pool costs several ms of CPU
per call at 32 connections, which would hide what is measured), sequentially (one client)
and with 32 concurrent clients (each on its own key, as Restate runs one exclusive call per
key at a time); the services alternate in rounds so that drift of a noisy machine hits them
alike. The small-state comparison runs ``--runs`` times (3 by default) and reports the median
of the runs' p50 ratios. With the stack it started, it also reports the CPU time (user +
system, from /proc) that the worker (hypercorn and its worker process), Restate and Redis
spent per call while each service's calls ran.

The large-state case: one object of ``--big-keys`` state keys of 1 KiB (1,000: 1 MB) per
variant, built through invocations of ``fill`` first (so native state is Restate's own), then
``POST /<service>/<key>/touch`` (read one key, write one) from one client, sequentially:
native eager (``BigNative``), native lazy (``BigNativeLazy``, ``enable_lazy_state=True``), this
backend eager (``BigRedis``) and lazy (``BigRedisLazy``). Every reply is checked to be the key
read and its value's length.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import statistics
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

# native state; native state plus two plain redis-py PINGs (two round trips to the same Redis,
# the least any state kept outside Restate costs); this backend
SERVICES = {"native": "NativeCounter", "native+2 pings": "PingCounter", "redis": "Counter"}
# the large-state case: variant -> service (examples/service.py)
BIG_SERVICES = {
    "native eager": "BigNative",
    "native lazy": "BigNativeLazy",
    "redis eager": "BigRedis",
    "redis lazy": "BigRedisLazy",
}
BIG_TARGETS = {"redis eager": ("native eager", 0.3), "redis lazy": ("native lazy", 0.75)}
SMALL_TARGET = 1.1  # p50 redis / native, small state, median of the runs
FILL_BATCH = 100  # state keys written per fill invocation


CHECKOUT = Path(__file__).resolve().parent.parent  # where examples.service imports from
Processes = dict[str, list[int]]  # the name of a CPU column -> the processes it adds up


@contextmanager
def local_stack(hypercorn_args: tuple[str, ...] = ()) -> Iterator[tuple[str, Processes]]:
    """Redis + restate-server + the example deployment (``hypercorn_args``: more options for
    hypercorn); yields the ingress URL and the process ids of the worker (hypercorn and its
    worker processes), Restate and Redis."""
    from restate_redis.tools.stack import children, start_server, start_stack

    redis_server = start_server("redis")
    try:
        env = {"RESTATE_REDIS_URL": redis_server.url, "RESTATE_REDIS_NAMESPACE": "latency"}
        stack = start_stack("examples.service:app", env, hypercorn_args, cwd=CHECKOUT)
        try:
            assert stack.deployment.proc and stack.server.proc and redis_server.proc
            hypercorn = stack.deployment.proc.pid
            yield (
                stack.ingress,
                {
                    "worker": [hypercorn, *children(hypercorn)],
                    "Restate": [stack.server.proc.pid],
                    "Redis": [redis_server.proc.pid],
                },
            )
        finally:
            stack.stop()
    finally:
        redis_server.stop()
        shutil.rmtree(redis_server.dir, ignore_errors=True)


@dataclass(frozen=True)
class Call:
    """What one measured call posts: ``/<service>/<key>/<handler>`` with ``body``; ``expect``:
    the reply it must get (None: any)."""

    service: str
    handler: str = "add"
    body: bytes = b"1"
    expect: bytes | None = None


async def _client_loop(
    client: aiohttp.ClientSession, call: Call, key: str, n: int, out: list[float]
) -> None:
    headers = {"content-type": "application/json"}
    path = f"/{call.service}/{key}/{call.handler}"
    for _ in range(n):
        t = time.perf_counter()
        async with client.post(path, data=call.body, headers=headers) as resp:
            body = await resp.read()
        out.append(time.perf_counter() - t)
        if resp.status != 200:
            raise RuntimeError(f"{path}: {resp.status} {body!r}")
        if call.expect is not None and body != call.expect:
            raise RuntimeError(f"{path}: read {body!r}, expected {call.expect!r}")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes, all threads, so far (Linux /proc; 0 for a
    process that is gone)."""
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # after "pid (name)": field 3 on
            ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return ticks / os.sysconf("SC_CLK_TCK")


@dataclass
class Measured:
    """Latencies (seconds) per backend, and CPU seconds per backend and process."""

    samples: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, dict[str, float]] = field(default_factory=dict)


async def measure(
    ingress: str,
    *,
    total: int,
    clients: int,
    rounds: int,
    warmup: int,
    processes: Processes,
    calls: dict[str, Call] | None = None,
    keys: list[str] | None = None,
) -> Measured:
    """``total`` calls per backend in ``rounds`` alternating rounds; the CPU the ``processes``
    spent while each backend's calls ran. ``calls``: what each backend's calls post (default:
    ``add`` on the small-state services); ``keys``: one object key per client (default: new
    ones)."""
    run = uuid.uuid4().hex[:8]
    keys = keys or [f"{run}-{clients}-{i}" for i in range(clients)]
    calls = calls or {b: Call(service) for b, service in SERVICES.items()}
    out = Measured(
        samples={b: [] for b in calls}, cpu={b: dict.fromkeys(processes, 0.0) for b in calls}
    )
    per_client = max(1, total // (rounds * clients))
    connector = aiohttp.TCPConnector(limit=clients + 4)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(ingress, connector=connector, timeout=timeout) as client:
        for call in calls.values():
            await asyncio.gather(
                *(_client_loop(client, call, k, max(1, warmup // clients), []) for k in keys)
            )
        for rnd in range(rounds):
            items = list(calls.items())
            shift = rnd % len(items)  # each service goes first, middle and last in turn
            order = items[shift:] + items[:shift]
            for backend, call in order:
                before = {name: cpu_seconds(pids) for name, pids in processes.items()}
                into = out.samples[backend]
                await asyncio.gather(
                    *(_client_loop(client, call, k, per_client, into) for k in keys)
                )
                for name, pids in processes.items():
                    out.cpu[backend][name] += cpu_seconds(pids) - before[name]
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def fill_big(ingress: str, key: str, keys: int) -> None:
    """Build the large-state object ``key`` of every large-state service through invocations:
    ``keys`` state keys of 1 KiB, ``FILL_BATCH`` per call."""
    headers = {"content-type": "application/json"}
    async with aiohttp.ClientSession(ingress, timeout=aiohttp.ClientTimeout(total=120)) as client:
        for service in BIG_SERVICES.values():
            for start in range(0, keys, FILL_BATCH):
                batch = json.dumps(list(range(start, min(keys, start + FILL_BATCH)))).encode()
                async with client.post(f"/{service}/{key}/fill", data=batch, headers=headers) as r:
                    if r.status != 200:
                        raise RuntimeError(f"{service}/{key}/fill: {r.status} {await r.read()!r}")


def big_calls(keys: int) -> tuple[dict[str, Call], str]:
    """The large-state calls (each reads the middle key) and the reply each must get."""
    read = f"k{keys // 2:04d}"
    expect = json.dumps(f"{read}:1024").encode()
    body = json.dumps(read).encode()
    calls = {b: Call(s, "touch", body, expect) for b, s in BIG_SERVICES.items()}
    return calls, expect.decode()


def table(results: dict[int, Measured], baseline: str = "native", first: str = "clients") -> str:
    """One row per setting and backend; ``baseline``: the backend the p50 is compared with."""
    names = list(next(iter(results.values())).cpu[baseline])
    head = [first, "backend", "calls", "p50 ms", "p99 ms", "mean ms", f"p50 vs {baseline}"]
    head += [f"{name} CPU ms/call" for name in names]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for clients, measured in results.items():
        native_p50 = percentile(measured.samples[baseline], 50)
        for backend, values in measured.samples.items():
            p50 = percentile(values, 50)
            row = [
                str(clients),
                backend,
                str(len(values)),
                f"{p50 * 1e3:.2f}",
                f"{percentile(values, 99) * 1e3:.2f}",
                f"{statistics.fmean(values) * 1e3:.2f}",
                f"{p50 / native_p50:.2f}x",
            ]
            row += [f"{measured.cpu[backend][n] / len(values) * 1e3:.2f}" for n in names]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def merge(runs: list[dict[int, Measured]]) -> dict[int, Measured]:
    """The runs' samples and CPU times added up, per setting."""
    out: dict[int, Measured] = {}
    for run in runs:
        for clients, measured in run.items():
            into = out.setdefault(clients, Measured())
            for backend, values in measured.samples.items():
                into.samples.setdefault(backend, []).extend(values)
                cpu = into.cpu.setdefault(backend, dict.fromkeys(measured.cpu[backend], 0.0))
                for name, seconds in measured.cpu[backend].items():
                    cpu[name] += seconds
    return out


def p50_ratio(measured: Measured, backend: str, baseline: str) -> float:
    return percentile(measured.samples[backend], 50) / percentile(measured.samples[baseline], 50)


def summary(runs: list[dict[int, Measured]], big: Measured, keys: int, read: str) -> str:
    """The ratios the performance targets are about, each with its target."""
    lines = []
    for clients in runs[0]:
        ratios = [p50_ratio(run[clients], "redis", "native") for run in runs]
        met = "met" if statistics.median(ratios) <= SMALL_TARGET else "NOT met"
        lines.append(
            f"small state, {clients} client(s): p50 redis / native, median of {len(runs)} "
            f"run(s): {statistics.median(ratios):.2f} (runs: "
            f"{', '.join(f'{r:.2f}' for r in ratios)}; target <= {SMALL_TARGET:g}: {met})"
        )
    for backend, (baseline, want) in BIG_TARGETS.items():
        ratio = p50_ratio(big, backend, baseline)
        lines.append(
            f"large state, {keys:,} x 1 KiB: p50 {backend} / {baseline}: {ratio:.2f} "
            f"(target <= {want:g}: {'met' if ratio <= want else 'NOT met'})"
        )
    lines.append(f"values read: every large-state call read {read}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ingress", help="the Restate ingress of a running example")
    parser.add_argument("--calls", type=int, default=1200, help="calls per backend and setting")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3, help="runs of the small-state case")
    parser.add_argument("--big-calls", type=int, default=600, help="large-state calls per variant")
    parser.add_argument("--big-keys", type=int, default=1000, help="1 KiB state keys per object")
    parser.add_argument(
        "--hypercorn-config",
        default=str(Path(__file__).with_name("hypercorn.toml")),
        help="hypercorn's config file for the example it starts ('' for hypercorn's defaults)",
    )
    args = parser.parse_args()

    async def run_all(
        ingress: str, processes: Processes
    ) -> tuple[list[dict[int, Measured]], Measured, str]:
        runs = []
        for _ in range(args.runs):
            results = {}
            for clients in (1, args.concurrency):
                results[clients] = await measure(
                    ingress,
                    total=args.calls,
                    clients=clients,
                    rounds=args.rounds,
                    warmup=args.warmup,
                    processes=processes,
                )
            runs.append(results)
        key = f"{uuid.uuid4().hex[:8]}-big"
        await fill_big(ingress, key, args.big_keys)
        calls, read = big_calls(args.big_keys)
        big = await measure(
            ingress,
            total=args.big_calls,
            clients=1,
            rounds=args.rounds,
            warmup=max(1, args.warmup // 4),
            processes=processes,
            calls=calls,
            keys=[key],
        )
        return runs, big, read

    load_before = os.getloadavg()[0]
    if args.ingress:  # processes unknown: no CPU columns
        runs, big, read = asyncio.run(run_all(args.ingress, {}))
    else:
        hypercorn_args = ("--config", args.hypercorn_config) if args.hypercorn_config else ()
        with local_stack(hypercorn_args) as (ingress, processes):
            runs, big, read = asyncio.run(run_all(ingress, processes))
    load = f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    print(f"machine: {machine()}; {load}")
    print(f"\nsmall state (a counter), {len(runs)} run(s) together:\n")
    print(table(merge(runs)))
    print(f"\nlarge state ({args.big_keys:,} x 1 KiB), read one key and write one:\n")
    print(table({1: big}, baseline="native eager"))
    print()
    print(summary(runs, big, args.big_keys, read))


if __name__ == "__main__":
    main()
