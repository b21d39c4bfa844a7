"""``restate-redis rekey [SERVICE ...]``: re-encrypt stored values under the current key.

The keys come from ``RESTATE_REDIS_KEYS`` (or ``RESTATE_REDIS_KEYS_FILE``), the first one
current. Every object of the services named (all services when none is) is rekeyed in its own
exclusive session, under its lease (:meth:`restate_redis.tools.admin.Admin.rekey`): values not
under the current key, plain ones included, are encrypted under it; values already under it
are left without a write. So the command is idempotent, and an interrupted run is resumed by
running it again. ``--dry-run`` only counts what is left, by key id.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field

import click

from ..codecs import ENV_KEYS, ENV_KEYS_FILE, encryption_from_env
from .admin import Admin, Rekeyed, SkippedKeys
from .kv import (
    EXIT_CODES_HELP,
    Connection,
    connection_options,
    count_option,
    done,
    fail,
    note,
    plural,
    report_missing_service,
    report_skipped,
    run,
)


@dataclass
class Tally:
    """What a run did, over every object."""

    objects: int = 0
    changed: int = 0  # objects with a value rewritten
    rewritten: int = 0
    current: int = 0
    found: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    def add(self, result: Rekeyed) -> None:
        self.objects += 1
        self.changed += result.rewritten > 0
        self.rewritten += result.rewritten
        self.current += result.current
        self.found.update(result.found)


@click.command(
    "rekey", context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES_HELP
)
@click.argument("services", nargs=-1, metavar="[SERVICE ...]")
@click.option("--dry-run", is_flag=True, help="Only count the values not under the current key.")
@count_option("--concurrency", 4, "Objects rekeyed at a time, each in its own session.", most=256)
@connection_options
def rekey_command(
    services: tuple[str, ...], dry_run: bool, concurrency: int, conn: Connection
) -> None:
    """Re-encrypt every value under the current key, object by object, under each object's
    lease (a running handler finishes first; none of its writes is lost).

    The keys come from RESTATE_REDIS_KEYS ("ID=BASE64,ID=BASE64", the first current) or the
    file RESTATE_REDIS_KEYS_FILE names. Values already under the current key are not written
    again: run it again to resume an interrupted run. Exit 1 when an object could not be
    rekeyed (the others still are).
    """
    try:
        encryption = encryption_from_env()
    except (ValueError, ImportError) as exc:
        fail(str(exc))
    if encryption is None:
        fail(
            f"rekey needs the encryption keys: set {ENV_KEYS} to ID=BASE64,ID=BASE64 (the first "
            f"is the current key) or {ENV_KEYS_FILE} to a file of them"
        )
    current = encryption.current
    tally = Tally()
    skipped = SkippedKeys()

    async def rekey_all(admin: Admin) -> None:
        names = list(services)
        if not names:
            found = await admin.services()
            skipped.merge(found.skipped)
            names = [s.name for s in found]
        objects: list[tuple[str, str]] = []
        for service in names:
            keys = [k async for k in admin.iter_objects(service, skipped=skipped)]
            if not keys and services:
                await report_missing_service(admin, conn, service)
            objects += [(service, k) for k in keys]
        await _run(admin, objects, dry_run, concurrency, tally)

    run(conn, rekey_all)
    report_skipped(skipped, conn)
    left = ", ".join(f"{n} under {k}" for k, n in sorted(tally.found.items()))
    if dry_run:
        total = sum(tally.found.values())
        done(
            f"{plural(total, 'value')} of {plural(tally.objects, 'object')} not under key "
            f"{current}" + (f" ({left})" if left else "") + f"; {tally.current} already are"
        )
    else:
        done(
            f"rekeyed {plural(tally.rewritten, 'value')} in {plural(tally.changed, 'object')} "
            f"to key {current}; {tally.current} values of {plural(tally.objects, 'object')} "
            f"were already under it"
        )
    if tally.failures:
        for failure in tally.failures[:5]:
            note(failure, conn)
        more = f" (the first {min(5, len(tally.failures))} above)"
        fail(f"{plural(len(tally.failures), 'object')} could not be rekeyed{more}", conn)


async def _run(
    admin: Admin, objects: list[tuple[str, str]], dry_run: bool, concurrency: int, tally: Tally
) -> None:
    """Rekey ``objects``, ``concurrency`` at a time, with a progress bar on stderr."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    limit = asyncio.Semaphore(concurrency)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("objects"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True)) as progress:
        task = progress.add_task("checking" if dry_run else "rekeying", total=len(objects))

        async def one(service: str, key: str) -> None:
            async with limit:
                try:
                    tally.add(await admin.rekey(service, key, dry_run=dry_run))
                except Exception as exc:  # the others still go on; reported at the end
                    tally.failures.append(str(exc))
                progress.advance(task)

        await asyncio.gather(*(one(service, key) for service, key in objects))
