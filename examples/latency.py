"""Latency of the example's counter through Restate: native state versus Redis state.

    python -m examples.latency                     # starts Redis, Restate and the example
    python -m examples.latency --ingress http://127.0.0.1:8080   # an example already running

Without ``--ingress`` it runs from a checkout with the dev extra installed: a Redis server
on a free port (tests/servers.py), restate-server from npm (tests/restate_server.py) with its
data on tmpfs where there is one, and ``hypercorn examples.service:app``; everything stops
at the end. Calls ``POST /NativeCounter/<key>/add``, ``/PingCounter/<key>/add`` (the same
plus two plain Redis PINGs: the floor of any state kept outside Restate) and
``/Counter/<key>/add`` through the ingress over keep-alive HTTP/1.1 (aiohttp: httpx's pool
costs several ms of CPU per call at 32 connections, which would hide what is measured),
sequentially (one client) and with 32 concurrent clients (each on its own key, as Restate
runs one exclusive call per key at a time); the services alternate in rounds so that drift
of a noisy machine hits them alike.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import statistics
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import aiohttp

# native state; native state plus two plain redis-py PINGs (two round trips to the same Redis,
# the least any state kept outside Restate costs); this backend
SERVICES = {"native": "NativeCounter", "native+2 pings": "PingCounter", "redis": "Counter"}


@contextmanager
def local_stack() -> Iterator[str]:
    """Redis + restate-server + the example deployment; yields the ingress URL."""
    from tests.restate_server import start_stack
    from tests.servers import start_server

    redis_server = start_server("redis")
    try:
        env = {"RESTATE_REDIS_URL": redis_server.url, "RESTATE_REDIS_NAMESPACE": "latency"}
        stack = start_stack("examples.service:app", env)
        try:
            yield stack.ingress
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


async def measure(
    ingress: str, *, total: int, clients: int, rounds: int, warmup: int
) -> dict[str, list[float]]:
    """Latencies (seconds) per backend: ``total`` calls each, in ``rounds`` alternating rounds."""
    run = uuid.uuid4().hex[:8]
    keys = [f"{run}-{clients}-{i}" for i in range(clients)]
    samples: dict[str, list[float]] = {b: [] for b in SERVICES}
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
                await asyncio.gather(
                    *(_client_loop(client, service, k, per_client, samples[backend]) for k in keys)
                )
    return samples


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def table(results: dict[int, dict[str, list[float]]]) -> str:
    lines = [
        "| clients | backend | calls | p50 ms | p99 ms | mean ms | p50 vs native |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for clients, samples in results.items():
        native_p50 = percentile(samples["native"], 50)
        for backend, values in samples.items():
            p50 = percentile(values, 50)
            lines.append(
                f"| {clients} | {backend} | {len(values)} | {p50 * 1e3:.2f} "
                f"| {percentile(values, 99) * 1e3:.2f} | {statistics.fmean(values) * 1e3:.2f} "
                f"| {p50 / native_p50:.2f}x |"
            )
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
    args = parser.parse_args()

    async def run_all(ingress: str) -> dict[int, dict[str, list[float]]]:
        results = {}
        for clients in (1, args.concurrency):
            results[clients] = await measure(
                ingress, total=args.calls, clients=clients, rounds=args.rounds, warmup=args.warmup
            )
        return results

    load_before = os.getloadavg()[0]
    if args.ingress:
        results = asyncio.run(run_all(args.ingress))
    else:
        with local_stack() as ingress:
            results = asyncio.run(run_all(ingress))
    load = f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    print(f"machine: {machine()}; {load}")
    print(table(results))


if __name__ == "__main__":
    main()
