"""``restate-redis demo --restate``: the demo's services under a real Restate server.

restate-server (found on PATH, else in the npm cache folder, installed there with the user's
consent) runs on free loopback ports with its data and temporary files in a temporary folder;
hypercorn serves :mod:`restate_redis.tools.demo.examples.sdk` (restate-sdk handlers whose state
``@store.restate_state()`` keeps in Redis) in worker processes; the deployment is registered
through the admin API and every invocation of the plan goes through the ingress. The
processes are started, and stopped by their pids at the end (the temporary folder removed), by
:mod:`restate_redis.tools.stack`, which the test suite and the latency script use too.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from ..stack import (
    RESTATE_VERSION,
    SERVER_PACKAGE,
    Deployment,
    RestateServer,
    RestateStack,
    StartError,
    Unavailable,
    launch,
    native_binary,
    npm_cache,
    npm_install,
    npm_install_command,
    tmpfs_dir,
)
from .examples import cart, fulfilment
from .run import Invocation, WorkerReport, progress_bar

__all__ = ["RESTATE_VERSION", "INSTALL_HINT", "locate_server", "running", "drive", "run"]

SDK_APP = "restate_redis.tools.demo.examples.sdk:app"
INSTALL_HINT = "pip install 'restate-redis[demo,restate]'"


def _interactive() -> bool:
    return sys.stdin.isatty()


def locate_server(yes: bool, console: Any) -> Path:
    """restate-server from PATH, else from the npm cache, else installed there (after asking,
    unless ``yes``)."""
    on_path = shutil.which("restate-server")
    if on_path is not None:
        return Path(on_path)
    cache = npm_cache()
    binary = native_binary(cache, SERVER_PACKAGE)
    if binary.exists():
        return binary
    package = f"{SERVER_PACKAGE}@{RESTATE_VERSION}"
    command = " ".join(npm_install_command(cache, SERVER_PACKAGE))
    if shutil.which("npm") is None:
        raise click.ClickException(
            "--restate needs restate-server: put it on PATH (https://docs.restate.dev), or "
            f"install Node.js with npm, then run: {command}"
        )
    if not yes:
        if not _interactive():
            raise click.ClickException(
                f"restate-server is not on PATH nor in {cache}: install it with `{command}`, "
                "or pass --yes to let the demo install it"
            )
        question = f"restate-server was not found. Install {package} into {cache}?"
        if not click.confirm(question, default=True):
            raise click.ClickException(f"restate-server is not installed; to install it: {command}")
    console.print(f"Installing {package} into {cache} with npm")
    try:
        npm_install(cache, SERVER_PACKAGE)
    except Unavailable as exc:
        raise click.ClickException(str(exc)) from None
    return binary


@contextlib.contextmanager
def running(binary: Path, redis_url: str, workers: int, retention: float) -> Iterator[RestateStack]:
    """restate-server and the hypercorn deployment, in one temporary folder, started and
    registered; stopped (and the folder removed) however the block ends."""
    folder = tmpfs_dir("restate-redis-demo-")
    server = RestateServer(binary, dir=folder, node_name="restate-redis-demo")
    # Restate runs every invocation as a stream of one HTTP/2 connection; hypercorn's
    # default closes it after 1,000 requests, stalling the streams in flight for a minute.
    config = folder / "hypercorn.toml"
    config.write_text("keep_alive_max_requests = 1000000000\n")
    deployment = Deployment(
        SDK_APP,
        {
            "RESTATE_REDIS_URL": redis_url,
            "RESTATE_REDIS_DEMO_RETENTION": repr(retention),
            "TMPDIR": str(server.tmp),
        },
        ("--config", str(config), "--workers", str(workers)),
        cwd=Path(__file__).resolve().parents[3],  # where this copy of restate_redis imports from
        dir=folder,
        restart=False,
    )
    try:
        stack = launch(server, deployment)  # (on a failure, stopped and the folder removed)
    except StartError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        yield stack
    finally:
        stack.stop()


# -- driving the plan through the ingress ------------------------------------------------------


async def _call(client: Any, report: WorkerReport, inv: Invocation) -> None:
    handler, key, sku, qty = inv
    path = f"/{cart.SERVICE}/{key}/"
    if handler == "view":
        r = await client.post(path + "view")
    elif handler == "checkout":
        r = await client.post(path + "checkout")
    else:
        r = await client.post(path + f"{handler}_item", json={"sku": sku, "qty": qty})
    if r.status_code != 200:
        raise RuntimeError(f"HTTP {r.status_code} {r.text.strip()[:200]}")
    result = r.json()
    if handler == "view":
        return
    if handler == "add":
        report.added[key, sku] += qty
    elif handler == "remove":
        report.removed[key, sku] += int(result)
    elif result["order_id"] is not None:
        report.orders[result["order_id"]] = (key, result["items"])
    report.exclusive[key] += 1


async def drive(
    ingress: str, plan: list[Invocation], in_flight: int, progress: Any
) -> tuple[WorkerReport, float]:
    """Run the plan through the ingress, ``in_flight`` invocations at a time."""
    import httpx

    report = WorkerReport()
    limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)
    todo = iter(plan)
    async with httpx.AsyncClient(base_url=ingress, timeout=120, limits=limits) as client:

        async def loop() -> None:
            for inv in todo:
                started = time.perf_counter()
                try:
                    await _call(client, report, inv)
                except (httpx.HTTPError, RuntimeError, ValueError) as exc:
                    report.errors.append(f"{inv[0]} {inv[1]}: {type(exc).__name__}: {exc}")
                report.latency[inv[0]].append(time.perf_counter() - started)
                progress()

        started = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(in_flight)))
        elapsed = time.perf_counter() - started
    report.latency = dict(report.latency)
    return report, elapsed


def run(
    binary: Path,
    url: str,
    plan: list[Invocation],
    workers: int,
    concurrency: int,
    retention: float,
    console: Any,
) -> tuple[WorkerReport, float]:
    """Start the stack, drive the plan through it, stop it; returns the report and the time."""
    with running(binary, url, workers, retention) as stack:
        lines = [
            f"Restate server: {binary} (ingress {stack.ingress}, admin {stack.server.admin}), "
            f"its data and logs in {stack.server.dir} (removed at the end)",
            f"Handlers: the restate-sdk services of {SDK_APP.split(':')[0]}, state kept in Redis "
            f"by @store.restate_state(), served by hypercorn with {workers} worker process(es) "
            f"on {stack.deployment.url}, registered with the server",
            f"Every invocation goes through the ingress; {cart.SERVICE}.checkout calls the "
            f"{fulfilment.SERVICE} workflow through Restate.",
        ]
        for line in lines:
            console.print(line, soft_wrap=True, markup=False, highlight=False)
        with progress_bar(console, len(plan)) as advance:
            return asyncio.run(drive(stack.ingress, plan, workers * concurrency, advance))
