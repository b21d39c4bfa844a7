"""``restate-redis du [SERVICE ...]``: how much each service stores, and its largest objects.

Read from the bookkeeping every commit keeps (meta ``b``, the stored bytes; ``HLEN`` of the
state, its key count; meta ``t``, the time of the last change), never from the values: one
sweep of the namespace by SCAN with MATCH on every master, with pipelined reads (see
:mod:`restate_redis.backend.inventory`). Options, output and exit codes as the ``kv``
commands (:mod:`restate_redis.tools.kv`); ``--plain`` prints one JSON object.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click

from ..backend.inventory import NEAR_LIMIT, ObjectInfo, ServiceInfo
from .admin import Admin, Usage
from .kv import (
    EXIT_CODES_HELP,
    Connection,
    connection_options,
    count_option,
    dumps,
    eager_limit_options,
    note,
    plural,
    printable,
    report_missing_service,
    report_skipped,
    run,
)

DEFAULT_TOP = 10

# How an eager open treats an object (inventory.EagerFit), in words.
LOAD_TEXT = {
    "lazy": "loads lazily",
    "near": "near the eager limit",
    "unknown": "size unknown",
    "eager": "",
}


def size_text(n: int | None) -> str:
    """``1536`` -> ``1.5 KiB``; None (unknown) -> ``unknown``."""
    if n is None:
        return "unknown"
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


def time_text(ms: int | None) -> str:
    """Milliseconds since the epoch as UTC (``2026-11-02 10:00:01Z``); ``-`` when unknown."""
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _service_json(info: ServiceInfo) -> dict[str, Any]:
    return {
        "objects": info.objects,
        "keys": info.keys,
        "bytes": info.bytes,
        "unsized": info.unsized,
        "lazy": info.lazy,
        "near": info.near,
    }


def _object_json(obj: ObjectInfo, conn: Connection) -> dict[str, Any]:
    return {
        "service": obj.service,
        "key": obj.key,
        "kind": obj.kind,
        "bytes": obj.size,
        "keys": obj.keys,
        "version": obj.version,
        "changed_ms": obj.changed_ms,
        "load": obj.fit(conn.eager_state_size_limit, conn.eager_state_field_limit),
    }


def _total(services: list[ServiceInfo]) -> ServiceInfo:
    total = ServiceInfo("total")
    for info in services:
        total.objects += info.objects
        total.keys += info.keys
        total.bytes += info.bytes
        total.unsized += info.unsized
        total.lazy += info.lazy
        total.near += info.near
    return total


def _print_tables(found: Usage, rows: list[ServiceInfo], top: int, conn: Connection) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(soft_wrap=False)
    table = Table(title=Text(printable(f"namespace {conn.namespace}")), title_justify="left")
    for name in ("service", "objects", "state keys", "size", "size unknown", "loads lazily"):
        table.add_column(name, justify="left" if name == "service" else "right")
    table.add_column("near the limit", justify="right")
    shown = [*rows, _total(rows)] if len(rows) > 1 else rows
    for info in shown:
        table.add_row(
            Text(printable(info.name)),
            f"{info.objects:,}",
            f"{info.keys:,}",
            ("≥ " if info.unsized else "") + size_text(info.bytes),  # the known part
            f"{info.unsized:,}" if info.unsized else "",
            f"{info.lazy:,}" if info.lazy else "",
            f"{info.near:,}" if info.near else "",
        )
    console.print(table)

    def objects(title: str, items: list[ObjectInfo]) -> None:
        listing = Table(title=Text(title), title_justify="left")
        for name in ("service", "key", "size", "state keys", "version", "last change", ""):
            right = name in ("size", "state keys", "version")
            listing.add_column(name, justify="right" if right else "left", overflow="fold")
        for obj in items:
            load = obj.fit(conn.eager_state_size_limit, conn.eager_state_field_limit)
            listing.add_row(
                Text(printable(obj.service)),
                Text(printable(obj.key)),
                size_text(obj.size),
                f"{obj.keys:,}",
                str(obj.version),
                time_text(obj.changed_ms),
                LOAD_TEXT[load] if load != "unknown" else "",
            )
        console.print(listing)

    if top and found.largest:
        objects(f"largest {plural(len(found.largest), 'object')}", found.largest)
    if top and found.unsized:
        objects(
            f"{plural(len(found.unsized), 'object')} of unknown size (written by another tool; "
            "the next eager open within the limits counts it), most state keys first",
            found.unsized,
        )
    limits = (
        f"eager limits: {size_text(conn.eager_state_size_limit)}, "
        f"{conn.eager_state_field_limit:,} state keys; near: {NEAR_LIMIT:.0%} of either"
    )
    console.print(Text(limits, style="dim"))


@click.command(
    "du", context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES_HELP
)
@click.argument("services", nargs=-1, metavar="[SERVICE ...]")
@count_option("--top", DEFAULT_TOP, "How many of the largest objects to show (0: none).", least=0)
@click.option("--plain", is_flag=True, help="Print one JSON object only.")
@connection_options
@eager_limit_options
def du_command(services: tuple[str, ...], top: int, plain: bool, conn: Connection) -> None:
    """Bytes and state keys stored per service, and the largest objects.

    Read from the bookkeeping each commit keeps (stored bytes, key count, time of the last
    change), never from the values, by one SCAN of the namespace on every master. Objects
    over an eager limit (--eager-size-limit, --eager-field-limit: the workers' store
    options) load lazily and are flagged, as are those near one; a size written by another
    tool is unknown, shown as such and never counted as 0.
    """
    wanted = list(dict.fromkeys(services)) or None

    async def measure(admin: Admin) -> Usage:
        found = await admin.usage(wanted, top=top)
        listed = {info.name for info in found.services}
        for name in wanted or []:
            if name not in listed:
                await report_missing_service(admin, conn, name)
        return found

    found = run(conn, measure)
    rows = list(found.services)
    if wanted is not None:  # every service asked for has its row, in the order asked
        by_name = {info.name: info for info in rows}
        rows = [by_name.get(name, ServiceInfo(name)) for name in wanted]
    elif not rows:
        note(f"no service has stored objects in namespace {conn.namespace!r}", conn)
    if plain:
        doc = {
            "namespace": conn.namespace,
            "limits": {
                "eager_state_size_limit": conn.eager_state_size_limit,
                "eager_state_field_limit": conn.eager_state_field_limit,
            },
            "services": [{"name": info.name, **_service_json(info)} for info in rows],
            "total": _service_json(_total(rows)),
            "largest": [_object_json(obj, conn) for obj in found.largest],
            "unsized": [_object_json(obj, conn) for obj in found.unsized],
        }
        click.echo(dumps(doc))
    else:
        _print_tables(found, rows, top, conn)
    report_skipped(found.skipped, conn)
