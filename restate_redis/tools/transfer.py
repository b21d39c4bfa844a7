"""What the import and export commands share: their progress bar and meter, and an import
run with its summary and exit codes (:mod:`.exchange` for files, :mod:`.migrate` for
Restate)."""

from __future__ import annotations

import time
from typing import Any

from ..errors import ImportConflictError
from ..records import Imported, ImportReport
from .admin import Admin
from .kv import EXIT_CONFLICT, Connection, done, fail, note, plural, run

SHOWN = 5
"""Objects a summary names per outcome."""
STEP = 100
"""Objects between two updates of the progress bar (an update per object would cost more
than the object)."""


def progress_bar(total: int | None) -> Any:
    """A progress bar on stderr: objects done (of ``total``), rate, time."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    rate = TextColumn("{task.fields[rate]}")
    if total is None:
        columns: tuple[Any, ...] = (
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TextColumn("{task.completed:,} objects"),
            rate,
            TimeElapsedColumn(),
        )
    else:
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("objects"),
            rate,
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
    return Progress(*columns, console=Console(stderr=True), transient=False)


class Meter:
    """Objects per second for the progress bar and the summary."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.count = 0

    def tick(self, n: int = 1) -> str:
        self.count += n
        return self.rate()

    def rate(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        return f"{self.count / elapsed:,.0f}/s"

    def seconds(self) -> float:
        return time.monotonic() - self.started


def summary(report: ImportReport, names: dict[str, list[str]]) -> str:
    parts = [
        f"{n} {label}"
        for n, label in (
            (report.created, "created"),
            (report.overwritten, "overwritten"),
            (report.unchanged, "unchanged"),
            (report.skipped, "skipped"),
            (report.conflict, "in conflict"),
        )
        if n
    ]
    head = (
        f"dry run, nothing written: of {plural(report.total, 'object')} would be "
        if report.dry_run
        else f"imported {plural(report.total, 'object')}: "
    )
    text = head + (", ".join(parts) or "none")
    for outcome in ("overwritten", "skipped", "conflict"):
        listed = names.get(outcome)
        if listed:
            text += f"\n  {outcome}: " + ", ".join(listed)
    return text


async def import_records(
    admin: Admin,
    records: Any,
    total: int | None,
    on_conflict: str,
    dry_run: bool,
    concurrency: int,
    names: dict[str, list[str]],
) -> tuple[ImportReport, Meter]:
    """``records`` imported with a progress bar; ``names`` gets a few objects per outcome."""
    meter = Meter()
    with progress_bar(total) as progress:
        task = progress.add_task("checking" if dry_run else "importing", total=total, rate="")

        def landed(result: Imported) -> None:
            listed = names.setdefault(result.outcome, [])
            if len(listed) < SHOWN:
                listed.append(f"{result.service}/{result.key}")
            meter.tick()
            if meter.count % STEP == 0:
                progress.update(task, completed=meter.count, rate=meter.rate())

        try:
            report = await admin.store.import_objects(
                records,
                on_conflict=on_conflict,  # type: ignore[arg-type]
                dry_run=dry_run,
                concurrency=concurrency,
                on_imported=landed,
            )
        finally:
            progress.update(task, completed=meter.count, rate=meter.rate())
    return report, meter


def finish(conn: Connection, go: Any, names: dict[str, list[str]]) -> None:
    """Run an import and print its summary; a conflict exits 3 after saying what was done."""
    try:
        report, meter = run_conflicts(conn, go)
    except ImportConflictError as exc:
        fail(str(exc), conn, EXIT_CONFLICT)
    done(summary(report, names))
    note(f"{plural(meter.count, 'object')} in {meter.seconds():.1f}s ({meter.rate()})", conn)
    if report.conflict:
        fail(
            f"{plural(report.conflict, 'object')} in conflict: an import with --on-conflict "
            f"fail would stop at the first",
            conn,
            EXIT_CONFLICT,
        )


def run_conflicts(conn: Connection, go: Any) -> Any:
    """:func:`restate_redis.tools.kv.run`, an ImportConflictError passed on to the caller."""
    caught: list[ImportConflictError] = []

    async def guarded(admin: Admin) -> Any:
        try:
            return await go(admin)
        except ImportConflictError as exc:
            caught.append(exc)
            return None

    result = run(conn, guarded)
    if caught:
        raise caught[0]
    return result
