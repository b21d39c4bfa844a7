"""Latency of the example's counter through Restate: native state versus Redis state.

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
alike. With the stack it started, it also reports the CPU time (user + system, from /proc)
that the worker (hypercorn and its worker process), Restate and Redis spent per call while
each service's calls ran.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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


async def _client_loop(
    client: aiohttp.ClientSession, service: str, key: str, n: int, out: list[float]
) -> None:
    headers = {"content-type": "application/json"}
    for _ in range(n):
        t = time.perf_counter()
        async with client.post(f"/{service}/{key}/add", data=b"1", headers=headers) as resp:
            body = await resp.read()
        out.append(time.perf_counter() - t)
        if resp.status != 200:
            raise RuntimeError(f"{service}/{key}/add: {resp.status} {body!r}")


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
    ingress: str, *, total: int, clients: int, rounds: int, warmup: int, processes: Processes
) -> Measured:
    """``total`` calls per backend in ``rounds`` alternating rounds; the CPU the ``processes``
    spent while each backend's calls ran."""
    run = uuid.uuid4().hex[:8]
    keys = [f"{run}-{clients}-{i}" for i in range(clients)]
    out = Measured(
        samples={b: [] for b in SERVICES}, cpu={b: dict.fromkeys(processes, 0.0) for b in SERVICES}
    )
    per_client = max(1, total // (rounds * clients))
    connector = aiohttp.TCPConnector(limit=clients + 4)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(ingress, connector=connector, timeout=timeout) as client:
        for service in SERVICES.values():
            await asyncio.gather(
                *(_client_loop(client, service, k, max(1, warmup // clients), []) for k in keys)
            )
        for rnd in range(rounds):
            items = list(SERVICES.items())
            shift = rnd % len(items)  # each service goes first, middle and last in turn
            order = items[shift:] + items[:shift]
            for backend, service in order:
                before = {name: cpu_seconds(pids) for name, pids in processes.items()}
                into = out.samples[backend]
                await asyncio.gather(
                    *(_client_loop(client, service, k, per_client, into) for k in keys)
                )
                for name, pids in processes.items():
                    out.cpu[backend][name] += cpu_seconds(pids) - before[name]
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def table(results: dict[int, Measured]) -> str:
    names = list(next(iter(results.values())).cpu["native"])
    head = ["clients", "backend", "calls", "p50 ms", "p99 ms", "mean ms", "p50 vs native"]
    head += [f"{name} CPU ms/call" for name in names]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for clients, measured in results.items():
        native_p50 = percentile(measured.samples["native"], 50)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ingress", help="the Restate ingress of a running example")
    parser.add_argument("--calls", type=int, default=1200, help="calls per backend and setting")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument(
        "--hypercorn-config",
        default=str(Path(__file__).with_name("hypercorn.toml")),
        help="hypercorn's config file for the example it starts ('' for hypercorn's defaults)",
    )
    args = parser.parse_args()

    async def run_all(ingress: str, processes: Processes) -> dict[int, Measured]:
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
        return results

    load_before = os.getloadavg()[0]
    if args.ingress:  # processes unknown: no CPU columns
        results = asyncio.run(run_all(args.ingress, {}))
    else:
        hypercorn_args = ("--config", args.hypercorn_config) if args.hypercorn_config else ()
        with local_stack(hypercorn_args) as (ingress, processes):
            results = asyncio.run(run_all(ingress, processes))
    load = f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    print(f"machine: {machine()}; {load}")
    print(table(results))


if __name__ == "__main__":
    main()
