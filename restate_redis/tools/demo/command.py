"""``restate-redis demo``: the command, on top of the embedded run (:mod:`.run`) and the run
under a real Restate server (:mod:`.restate`)."""

from __future__ import annotations

import asyncio
import secrets
import sys
from typing import Any

import click
from redis.exceptions import RedisError

from ...backend.connection import redact
from ...errors import StateError
from .examples import cart, fulfilment
from .run import (
    check_at,
    latency_table,
    make_plan,
    merge,
    ping,
    run_workers,
    serve_ui,
)


@click.command("demo")
@click.option("--url", default=None, help="Use this Redis instead of the embedded server.")
@click.option(
    "--workers",
    default=4,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Worker processes running the services.",
)
@click.option(
    "--invocations",
    default=3000,
    show_default=True,
    type=click.IntRange(1),
    help="Invocations in total.",
)
@click.option(
    "--objects",
    default=8,
    show_default=True,
    type=click.IntRange(1),
    help="Carts the invocations contend on.",
)
@click.option(
    "--concurrency",
    default=16,
    show_default=True,
    type=click.IntRange(1, 1000),
    help="Invocations in flight per worker.",
)
@click.option(
    "--retention",
    default=3600.0,
    show_default=True,
    type=click.FloatRange(0.001),
    help="Seconds a completed order workflow's state is kept.",
)
@click.option("--seed", default=None, type=int, help="Seed of the invocation plan.")
@click.option(
    "--ui", "with_ui", is_flag=True, help="Afterwards keep the server and the UI up until Ctrl-C."
)
@click.option(
    "--restate",
    "with_restate",
    is_flag=True,
    help="Run the services as restate-sdk handlers under a real restate-server.",
)
@click.option(
    "--yes", "-y", is_flag=True, help="With --restate: install restate-server without asking."
)
def demo_command(
    url: str | None,
    workers: int,
    invocations: int,
    objects: int,
    concurrency: int,
    retention: float,
    seed: int | None,
    with_ui: bool,
    with_restate: bool,
    yes: bool,
) -> None:
    """Run a shopping cart and an order workflow under contention, then check no update was
    lost."""  # fmt: skip
    from rich.console import Console

    from ..embedded import exit_cleanly_on_sigterm

    console = Console()
    exit_cleanly_on_sigterm()  # so that the finally blocks stop what was started
    binary = None
    if with_restate:
        from . import restate as demo_restate

        try:
            import httpx  # noqa: F401
            import hypercorn  # noqa: F401
            import restate  # noqa: F401
        except ImportError:
            raise click.ClickException(
                f"--restate needs restate-sdk, hypercorn and httpx: {demo_restate.INSTALL_HINT}"
            ) from None
        # Before anything starts: this may ask the user, and may fail.
        binary = demo_restate.locate_server(yes, console)
    embedded = None
    if url is None:
        from ..embedded import start_for_command

        embedded = start_for_command()
        url = embedded.url
        console.print(f"Embedded Valkey server on [bold]{url}[/] (stopped at exit)")
    else:
        console.print(f"Using Redis at [bold]{redact(url)}[/]")
    try:
        try:
            asyncio.run(ping(url))
        except (ValueError, RedisError, StateError) as exc:
            raise click.ClickException(f"cannot use {redact(url)}: {exc}") from exc
        run_id = secrets.token_hex(3)
        seed = seed if seed is not None else secrets.randbits(32)
        plan = make_plan(run_id, invocations, objects, seed)
        carts = sorted({key for _, key, _, _ in plan})
        console.print(
            f"Run {run_id}: {invocations} invocations on {objects} carts, {workers} workers x "
            f"{concurrency} in flight (seed {seed})"
        )
        if binary is not None:
            report, elapsed = demo_restate.run(
                binary, url, plan, workers, concurrency, retention, console
            )
        else:
            console.print(
                f"No Restate server in this mode: {workers} worker process(es) call the "
                "handlers of restate_redis.tools.demo.examples directly, each opening its "
                "session on Redis as a Restate handler would (restate-redis demo --restate runs "
                "them under a real restate-server).",
                soft_wrap=True,
                highlight=False,
            )
            reports, elapsed = run_workers(url, plan, workers, concurrency, retention, console)
            report = merge(reports)
        console.print(latency_table(report, elapsed, len(plan)))
        problems, n_orders = asyncio.run(check_at(url, carts, report))
        problems = report.errors[:10] + problems
        if problems:
            console.print(f"[bold red]Check FAILED[/]: {len(problems)} problem(s)")
            for p in problems[:20]:
                console.print(f"  {p}", soft_wrap=True, markup=False)
        else:
            console.print(
                f"[bold green]Check passed[/]: every cart holds exactly what its "
                f"{sum(report.exclusive.values())} exclusive invocations imply (no lost "
                f"update); {n_orders} order workflows completed with retention {retention:g} s."
            )
        orders = sorted(report.orders)[:1]
        _hints(console, url, carts[0], orders, embedded is not None, with_ui, with_restate)
        if with_ui:
            serve_ui(url, console)
        if problems:
            sys.exit(1)
    finally:
        if embedded is not None:
            embedded.stop()


def _hints(
    console: Any,
    url: str,
    key: str,
    orders: list[str],
    embedded: bool,
    with_ui: bool,
    with_restate: bool,
) -> None:
    """The commands to look at the state, only when the server holding it is still up."""
    if embedded and not with_ui:
        again = "restate-redis demo --restate" if with_restate else "restate-redis demo"
        options = {
            "--ui": "keeps the server and the UI up until Ctrl-C",
            "--url redis://127.0.0.1:6379/0": "runs against your own Redis, which keeps the state",
        }
        width = max(map(len, options))
        lines = [
            "The embedded Valkey server stops now, and the state with it. To look at the state "
            "afterwards:",
            *(f"  {again} {opt.ljust(width)}   {what}" for opt, what in options.items()),
        ]
    else:
        lines = [
            "Look at the state:",
            f"  restate-redis kv get {cart.SERVICE} {key} --url {url}",
        ]
        if orders:
            lines.append(f"  restate-redis kv get {fulfilment.SERVICE} {orders[0]} --url {url}")
        if not with_ui:
            lines.append(f"  restate-redis ui --url {url}   (then open http://127.0.0.1:9071)")
    for line in lines:
        console.print(line, soft_wrap=True, markup=False, highlight=False)
