"""``restate-redis export`` and ``restate-redis import``: whole objects to and from a file.

``export [SERVICE ...] -o FILE`` writes every object of the namespace (or of the services
named) as JSON Lines (:mod:`restate_redis.records`: a versioned header line, then one record
per object with its state bytes in base64), with a progress bar on stderr. The file appears
under its name only when the export is complete (it is written beside it first, then
renamed). ``import FILE`` applies each record with
:meth:`~restate_redis.RedisStateStore.import_object`: whole, atomically, under the object's
lease, idempotently. The file is read through once first, so that a bad line (reported with
its number, exit 5) stops the import before anything is written.

Exit codes, beside the common ones (:mod:`restate_redis.tools.kv`): 3 an import with
``--on-conflict fail`` (the default) met an object the target holds otherwise (nothing of it
was written; the objects before it were); 5 the file is not a valid export (its line named).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import click

from ..records import (
    ON_CONFLICT,
    ImportReport,
    ObjectRecord,
    RecordFormatError,
    header_line,
    read_lines,
    record_line,
)
from .admin import Admin, SkippedKeys
from .kv import (
    Connection,
    connection_options,
    count_option,
    fail,
    note,
    plural,
    report_skipped,
    run,
)
from .transfer import STEP, Meter, finish, import_records, progress_bar

EXIT_BAD_FILE = 5

EXCHANGE_EXIT_CODES = (
    "Exit codes: 0 ok; 1 failure (one line on stderr); 2 usage error; 3 an object the target "
    "holds otherwise, with --on-conflict fail (that object not written); 5 a bad file (its "
    "line named; nothing written)."
)
# -- export ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _output(path: str) -> Iterator[IO[str]]:
    """``path`` for writing, appearing under its name only when the block ends well ("-":
    standard output)."""
    if path == "-":
        yield sys.stdout
        sys.stdout.flush()
        return
    target = Path(path)
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    try:
        with partial.open("w", encoding="utf-8", newline="\n") as out:
            yield out
        os.replace(partial, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()


async def export_to(
    admin: Admin,
    out: IO[str],
    services: list[str] | None,
    concurrency: int,
    progress: Any,
    skipped: SkippedKeys,
    history: bool = False,
) -> Meter:
    """Write the header and every record of ``services`` to ``out`` (``history``: with
    each object's history entries)."""
    store = admin.store
    meter = Meter()
    out.write(header_line(store.keyspace.namespace, int(time.time() * 1000), services) + "\n")
    task = progress.add_task("exporting", total=None, rate="")
    export = store.export_objects(services, concurrency=concurrency, history=history)
    async for record in export:
        out.write(record_line(record) + "\n")
        meter.tick()
        if meter.count % STEP == 0:
            progress.update(task, completed=meter.count, rate=meter.rate())
    progress.update(task, completed=meter.count, rate=meter.rate())
    skipped.merge(export.skipped)
    return meter


@click.command(
    "export", context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXCHANGE_EXIT_CODES
)
@click.argument("services", nargs=-1, metavar="[SERVICE ...]")
@click.option(
    "-o",
    "--output",
    "output",
    metavar="FILE",
    help="The file to write (JSON Lines); - for standard output.",
)
@click.option(
    "--to-restate",
    "to_restate",
    metavar="ADMIN_URL",
    help="Write the state into Restate's own (its admin API, e.g. http://127.0.0.1:9070) "
    "instead of a file.",
)
@click.option(
    "--keep-bytes",
    is_flag=True,
    help="With --to-restate: move the stored bytes as they are, not re-encoded as the SDK's JSON.",
)
@click.option(
    "--history",
    "with_history",
    is_flag=True,
    help="Also each object's history (its entries as stored, ids and all): an import "
    "then keeps it.",
)
@count_option("--concurrency", 64, "Objects read at a time.", most=1024)
@connection_options
def export_command(
    services: tuple[str, ...],
    output: str | None,
    to_restate: str | None,
    keep_bytes: bool,
    with_history: bool,
    concurrency: int,
    conn: Connection,
) -> None:
    """Write every object and workflow (of the services named, else all) to FILE, losslessly:
    the state bytes as stored, the version, the workflow status, the time left until the
    object expires and that of each state key with an expiry of its own.

    Each object is read at one instant (one script), so a record is never half a commit.
    The file is JSON Lines: a header line, then one object per line (see the docs' "Export
    and import" page); it appears under its name only once complete.
    """
    wanted = list(dict.fromkeys(services)) or None
    skipped = SkippedKeys()
    if with_history and to_restate is not None:
        raise click.UsageError("--history goes with -o FILE (Restate keeps no history)")
    if to_restate is not None:
        if output is not None:
            raise click.UsageError("-o FILE and --to-restate exclude each other")
        from .migrate import export_to_restate

        export_to_restate(conn, to_restate, wanted, keep_bytes, concurrency)
        return
    if keep_bytes:
        raise click.UsageError("--keep-bytes goes with --to-restate (a file keeps the bytes)")
    if output is None:
        raise click.UsageError("missing -o FILE: where to write the export (- for stdout)")

    async def go(admin: Admin) -> Meter:
        with _output(output) as out, progress_bar(None) as progress:
            return await export_to(admin, out, wanted, concurrency, progress, skipped, with_history)

    meter = run(conn, go)
    report_skipped(skipped, conn)
    where = "standard output" if output == "-" else output
    note(
        f"exported {plural(meter.count, 'object')} to {where} in {meter.seconds():.1f}s "
        f"({meter.rate()})",
        conn,
    )


# -- import ---------------------------------------------------------------------------------------


def _lines(path: str) -> Iterator[str]:
    """The lines of ``path`` as text; a line that is not UTF-8 is a bad file (its number)."""
    stream = sys.stdin.buffer if path == "-" else Path(path).open("rb")  # noqa: SIM115
    try:
        for number, raw in enumerate(stream, start=1):
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise RecordFormatError(f"not UTF-8 text: {exc.reason}", number) from None
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


def check_file(path: str) -> int:
    """Read the whole file once: the number of its records, or a RecordFormatError at the
    first bad line."""
    return sum(1 for _ in read_lines(_lines(path)))


def _file_records(path: str) -> Iterator[ObjectRecord]:
    for _, record in read_lines(_lines(path)):
        yield record


def conflict_options(command: Any) -> Any:
    command = click.option(
        "--dry-run", is_flag=True, help="Write nothing; say what the import would do."
    )(command)
    command = click.option(
        "--on-conflict",
        type=click.Choice(ON_CONFLICT),
        default="fail",
        show_default=True,
        help="For an object the target holds otherwise: leave it, replace it, or stop.",
    )(command)
    return command


@click.command(
    "import", context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXCHANGE_EXIT_CODES
)
@click.argument("args", nargs=-1, metavar="FILE | --from-restate ADMIN_URL [SERVICE ...]")
@click.option(
    "--from-restate",
    "from_restate",
    metavar="ADMIN_URL",
    help="Read the state from Restate's own (its admin API, e.g. http://127.0.0.1:9070) "
    "instead of a file: every Virtual Object and Workflow, or the SERVICEs named.",
)
@click.option(
    "--keep-bytes",
    is_flag=True,
    help="With --from-restate: keep Restate's bytes as they are, not re-encoded from the "
    "SDK's JSON into the store's serde.",
)
@conflict_options
@count_option("--concurrency", 64, "Objects written at a time.", most=1024)
@connection_options
def import_command(
    args: tuple[str, ...],
    from_restate: str | None,
    keep_bytes: bool,
    on_conflict: str,
    dry_run: bool,
    concurrency: int,
    conn: Connection,
) -> None:
    """Apply an export FILE (or Restate's own state): each object whole, atomically, under
    its lease (a running handler finishes first), keeping its state bytes, version,
    workflow status and expiries.

    Idempotent: an object the target already holds the same (version, workflow status and
    state bytes) is left as it is, so running it again writes nothing. For an object the
    target holds otherwise, --on-conflict says what to do (fail: stop there, exit 3). The
    file is read through once before anything is written: a bad line stops it (exit 5).

    With --from-restate ADMIN_URL [SERVICE ...], the objects come from Restate's own state
    (its admin API's SQL endpoint), values re-encoded from the SDK's JSON into --serde
    (--keep-bytes: as they are), each at version 1.
    """
    if from_restate is not None:
        from .migrate import import_from_restate

        services = list(dict.fromkeys(args)) or None
        import_from_restate(
            conn, from_restate, services, keep_bytes, on_conflict, dry_run, concurrency
        )
        return
    if keep_bytes:
        raise click.UsageError("--keep-bytes goes with --from-restate (a file keeps the bytes)")
    if len(args) != 1:
        raise click.UsageError(
            f"expected one FILE (or --from-restate ADMIN_URL [SERVICE ...]), got {len(args)} "
            f"arguments"
        )
    file = args[0]
    try:
        total = check_file(file)
    except RecordFormatError as exc:
        fail(f"{file}: {exc}; nothing was written", conn, EXIT_BAD_FILE)
    except OSError as exc:
        fail(f"cannot read {file}: {exc.strerror or exc}", conn)
    names: dict[str, list[str]] = {}

    async def go(admin: Admin) -> tuple[ImportReport, Meter]:
        return await import_records(
            admin, _file_records(file), total, on_conflict, dry_run, concurrency, names
        )

    finish(conn, go, names)
