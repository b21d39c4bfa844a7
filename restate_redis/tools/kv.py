"""``restate-redis kv ...`` and ``restate-redis services``: inspect and edit state from a shell.

Every command takes ``--url`` (env ``RESTATE_REDIS_URL``), ``--namespace`` (env
``RESTATE_REDIS_NAMESPACE``) and ``--serde`` (env ``RESTATE_REDIS_SERDE``), and goes through
:mod:`restate_redis.tools.admin`: changes take the object's lease like a handler and land in one
atomic commit. With ``RESTATE_REDIS_KEYS`` (or ``RESTATE_REDIS_KEYS_FILE``) set, encrypted
values are read and written with those keys (:mod:`restate_redis.codecs`); without them they
show as ``{"$encrypted": "KEY-ID"}`` and cannot be changed.

Exit codes: 0 success; 1 any failure, with one line on stderr; 2 a usage error; 3 a version
conflict (the object changed since it was read; nothing was written); 4 the UI could not
listen on its address (the port is in use, say); 5 no history (the object has none, or a
restore reaches further back than it keeps; nothing was written).

Every name, key and value printed goes through :func:`printable`, so stored data cannot
send control sequences (or reorder the text with bidi overrides) to the terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import difflib
import functools
import json
import os
import re
import shlex
import sys
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn, TypeVar

import click

from ..backend.connection import redact, scrub
from ..backend.retry import as_state_error
from ..codecs import ENV_KEYS, ENV_KEYS_FILE, encryption_from_env
from ..errors import (
    HistoryNotKeptError,
    StateError,
    StoreUnavailableError,
    VersionConflictError,
)
from ..history import History
from ..serde import BytesSerde, JsonSerde, MsgPackSerde, Serde
from ..store import DEFAULT_FIELD_LIMIT, MiB, RedisStateStore
from .admin import UNSAFE_IN_JSON, Admin, ObjectState, SkippedKeys, load_json, same_value

T = TypeVar("T")

ENV_URL = "RESTATE_REDIS_URL"
ENV_NAMESPACE = "RESTATE_REDIS_NAMESPACE"
ENV_SERDE = "RESTATE_REDIS_SERDE"
DEFAULT_URL = "redis://127.0.0.1:6379/0"
DEFAULT_SIZE_LIMIT = 32 * MiB  # the store's default eager_state_size_limit

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_CONFLICT = 3
EXIT_CANNOT_LISTEN = 4
EXIT_NO_HISTORY = 5

EXIT_CODES_HELP = (
    "Exit codes: 0 ok; 1 failure (one line on stderr); 2 usage error; 3 version conflict "
    "(nothing written); 4 the UI could not listen on its address; 5 no history (nothing "
    "written)."
)

SERDES: dict[str, Callable[[], Serde[Any]]] = {
    "msgpack": MsgPackSerde,
    "json": JsonSerde,
    "bytes": BytesSerde,
}


# -- what reaches the terminal ----------------------------------------------------------------

# C0 and C1 controls, DEL, and the invisible marks and overrides that reorder or hide text
# (bidi embeddings, overrides and isolates, LRM/RLM/ALM, line and paragraph separators).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
# The same, minus what json.dumps already escapes (C0), is admin.UNSAFE_IN_JSON: for JSON text.


_SHORT_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """``text`` safe for a terminal: controls and bidi marks shown as escapes in Python's
    style (``\\x1b``, ``\\n``, ``\\u202e``), everything else as it is."""
    return _UNSAFE.sub(_escape, text)


def _json_escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def plural(n: int, word: str) -> str:
    """``1 object``, ``2 objects``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


# -- connection -------------------------------------------------------------------------------


def redact_url(url: str) -> str:
    """``url`` with its password and secret options replaced by ``***``
    (:func:`restate_redis.backend.connection.redact`)."""
    return redact(url)


@dataclass(frozen=True, slots=True)
class Connection:
    """Where the state lives, from the common options."""

    url: str
    namespace: str
    serde: str
    acquire_timeout: float
    eager_state_size_limit: int = DEFAULT_SIZE_LIMIT
    eager_state_field_limit: int = DEFAULT_FIELD_LIMIT

    def open_store(self) -> RedisStateStore:
        # The keys come from the environment (or the file it names), never from the URL;
        # values are read whatever their codec, and written encrypted when keys are given.
        encryption = encryption_from_env()
        return RedisStateStore.from_url(
            self.url,
            namespace=self.namespace,
            serde=SERDES[self.serde](),
            codecs=None if encryption is None else [encryption],
            acquire_timeout=self.acquire_timeout,
            eager_state_size_limit=self.eager_state_size_limit,
            eager_state_field_limit=self.eager_state_field_limit,
            # edits add an entry to an object's history when its workers keep one (they
            # trim it by their limits, which this tool does not know)
            history=History(only_existing=True),
            # a person is waiting: report an unreachable Redis after seconds, not the
            # long retry budget that rides out a failover in a worker
            retry_attempts=3,
            retry_timeout=3,
            socket_connect_timeout=5,
        )


def connection_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options every command shares; they become one ``conn`` argument."""

    @click.option(
        "--url",
        envvar=ENV_URL,
        default=DEFAULT_URL,
        show_default=True,
        help=f"Redis URL (redis://, rediss://, unix://); env {ENV_URL}.",
    )
    @click.option(
        "--namespace",
        envvar=ENV_NAMESPACE,
        default="restate",
        show_default=True,
        help=f"Key prefix the store uses; env {ENV_NAMESPACE}.",
    )
    @click.option(
        "--serde",
        envvar=ENV_SERDE,
        type=click.Choice(sorted(SERDES)),
        default="msgpack",
        show_default=True,
        help=f"How values are encoded; env {ENV_SERDE}.",
    )
    @click.option(
        "--acquire-timeout",
        type=click.FloatRange(min=0),
        default=30.0,
        show_default=True,
        help="Seconds a change waits for a running handler to release the object.",
    )
    @functools.wraps(command)
    def wrapper(
        *args: Any, url: str, namespace: str, serde: str, acquire_timeout: float, **kwargs: Any
    ) -> Any:
        conn = Connection(url, namespace, serde, acquire_timeout)
        return command(*args, conn=conn, **kwargs)

    return wrapper


def count_option(
    name: str,
    default: int,
    help: str,
    *,
    metavar: str = "N",
    least: int = 1,
    most: int | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """An option taking a whole number from ``least`` (to ``most``), its default shown."""
    return click.option(
        name,
        type=click.IntRange(min=least, max=most),
        default=default,
        show_default=True,
        metavar=metavar,
        help=help,
    )


def eager_limit_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--eager-size-limit`` and ``--eager-field-limit``: the limits the workers' stores use,
    against which objects are flagged (they replace ``conn`` with one that has them)."""

    @count_option(
        "--eager-size-limit",
        DEFAULT_SIZE_LIMIT,
        "The workers' eager_state_size_limit: a larger state loads lazily.",
        metavar="BYTES",
    )
    @count_option(
        "--eager-field-limit",
        DEFAULT_FIELD_LIMIT,
        "The workers' eager_state_field_limit: a state with more keys loads lazily.",
    )
    @functools.wraps(command)
    def wrapper(
        *args: Any, conn: Connection, eager_size_limit: int, eager_field_limit: int, **kwargs: Any
    ) -> Any:
        limited = dataclasses.replace(
            conn,
            eager_state_size_limit=eager_size_limit,
            eager_state_field_limit=eager_field_limit,
        )
        return command(*args, conn=limited, **kwargs)

    return wrapper


def fail(message: str, conn: Connection | None = None, code: int = EXIT_FAILURE) -> NoReturn:
    """Print one line on stderr (never the URL's secrets) and exit with ``code``."""
    text = " ".join(str(message).split())
    if conn is not None:
        text = scrub(text, conn.url)
    click.echo(f"restate-redis: error: {printable(text)}", err=True)
    sys.exit(code)


def note(message: str, conn: Connection | None = None) -> None:
    """One line for the user on stderr, apart from the command's output."""
    text = scrub(message, conn.url) if conn is not None else message
    click.echo(f"restate-redis: {printable(text)}", err=True)


def run(conn: Connection, action: Callable[[Admin], Awaitable[T]]) -> T:
    """Run ``action`` on a store for ``conn``; every failure becomes a one-line message."""
    where = f"Redis at {redact(conn.url)}"

    async def main() -> T:
        store = conn.open_store()
        try:
            return await action(Admin(store))
        finally:
            # closing after a failure must not hide that failure
            with contextlib.suppress(Exception):
                await store.aclose()

    try:
        return asyncio.run(main())
    except VersionConflictError as exc:
        fail(str(exc), conn, EXIT_CONFLICT)
    except HistoryNotKeptError as exc:
        fail(str(exc), conn, EXIT_NO_HISTORY)
    except StoreUnavailableError as exc:
        fail(f"{where}: {exc}", conn)
    except StateError as exc:
        fail(str(exc), conn)
    except ValueError as exc:  # a bad URL, a bad option value
        fail(str(exc), conn)
    except ImportError as exc:  # a codec's package (pip install 'restate-redis[codecs]')
        fail(str(exc), conn)
    except Exception as exc:  # redis-py's own errors (a cluster's included), sockets, ...
        translated = as_state_error(exc, where)
        if translated is exc:
            fail(f"{where}: {type(exc).__name__}: {exc}", conn)
        fail(str(translated), conn)


def parse_json(text: str, what: str, hint: str = "") -> Any:
    """``text`` as JSON; a clear one-line failure (with ``hint`` appended) when it is not.

    NaN, Infinity and numbers too large for a float are refused: JSON cannot carry them.
    """
    try:
        return load_json(text)
    except ValueError as exc:
        fail(f"bad JSON for {what}: {exc}{hint}")


def dumps(value: Any, indent: int | None = None) -> str:
    """JSON text safe for a terminal: json.dumps escapes C0 controls, and the other
    characters :func:`printable` escapes become ``\\uXXXX`` too (still valid JSON)."""
    text = json.dumps(value, indent=indent, ensure_ascii=False, sort_keys=indent is not None)
    return UNSAFE_IN_JSON.sub(_json_escape, text)


def duration(ms: int) -> str:
    """``93784000`` -> ``1d 2h 3m 4s``."""
    secs = max(0, ms) // 1000
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            parts.append(f"{secs // size}{unit}")
            secs %= size
    parts.append(f"{secs}s")
    return " ".join(parts)


_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(text: str) -> timedelta:
    """``"10m"``, ``"1h30m"``, ``"2d"``, ``"500ms"``, ``"1.5h"`` or plain seconds (``"90"``)
    as a timedelta; ValueError saying what a duration looks like."""
    spec = text.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", spec):
        return timedelta(seconds=float(spec))
    parts = _DURATION_PART.findall(spec)
    if not spec or "".join(n + u for n, u in parts) != spec:
        raise ValueError(
            f"{text!r} is not a duration: write a number with a unit (ms, s, m, h, d), such "
            f"as 30s, 10m, 1h, 2d or 1h30m, or plain seconds"
        )
    return timedelta(seconds=sum(float(n) * _DURATION_UNITS[u] for n, u in parts))


def duration_option(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> timedelta | None:
    """The callback of an option that takes :func:`parse_duration`'s durations."""
    if value is None:
        return None
    try:
        parsed = parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None
    if parsed <= timedelta(0):
        raise click.BadParameter(f"{value!r} is not a positive duration", ctx, param)
    return parsed


def describe(state: ObjectState) -> str:
    """One line about an object: version, kind, workflow status and remaining retention."""
    text = f"{state.service}/{state.key}: version {state.version}"
    if not state.exists:
        return text + " (no state stored)"
    text += f", {plural(len(state.values), 'key')}"
    if state.workflow_status is not None:
        text += f", workflow {state.workflow_status}"
    if state.retention_ms is not None:
        text += f", state expires in {duration(state.retention_ms)}"
    return text


def split_target(target: str) -> tuple[str, str | None]:
    """``SERVICE/KEY`` -> (service, key); ``SERVICE`` -> (service, None)."""
    service, sep, key = target.partition("/")
    if not service:
        raise click.UsageError(
            f"bad target {printable(repr(target))}: expected SERVICE or SERVICE/KEY"
        )
    return service, key if sep else None


def address(
    words: Sequence[str], names: Sequence[str], optional: int = 0
) -> tuple[str, str, list[str | None]]:
    """``SERVICE KEY NAME...`` or ``SERVICE/KEY NAME...`` -> (service, key, names).

    ``names`` are the arguments after the object; the last ``optional`` of them may be left
    out (they come back as None). A wrong count is a usage error (exit 2).
    """
    form = " ".join(["SERVICE KEY", *names])
    if not words:
        raise click.UsageError(f"missing arguments: expected {form} (or SERVICE/KEY ...)")
    service, key = split_target(words[0])
    rest = list(words[1:])
    if key is None:
        if not rest:
            raise click.UsageError(f"missing the object key: expected {form}")
        key = rest.pop(0)
    if not len(names) - optional <= len(rest) <= len(names):
        raise click.UsageError(
            f"expected {form} (or SERVICE/KEY ...), got {len(words)} "
            f"argument{'' if len(words) == 1 else 's'}"
        )
    return service, key, [*rest, *[None] * (len(names) - len(rest))]


def addressed(*names: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command the arguments ``SERVICE KEY NAMES...`` (or ``SERVICE/KEY NAMES...``);
    it is called with ``service``, ``key`` and one keyword per name: ``"NAME"`` passes
    ``name=``, ``"JSON:value"`` shows JSON in the usage line and passes ``value=``."""
    shown = [n.partition(":")[0] for n in names]
    params = [(n.partition(":")[2] or n).lower() for n in names]
    metavar = " ".join(["SERVICE KEY", *shown])

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        @click.argument("words", nargs=-1, metavar=metavar)
        @functools.wraps(command)
        def wrapper(*args: Any, words: tuple[str, ...], **kwargs: Any) -> Any:
            service, key, values = address(words, shown)
            given = dict(zip(params, values, strict=True))
            return command(*args, service=service, key=key, **given, **kwargs)

        return wrapper

    return decorate


async def report_missing_service(
    admin: Admin, conn: Connection, service: str, skipped: SkippedKeys | None = None
) -> bool:
    """When ``service`` has no stored objects, say so on stderr with the nearest known
    service names and the server asked; True when it said so."""
    found = await admin.services()
    if skipped is not None:
        skipped.merge(found.skipped)
    names = [s.name for s in found]
    if service in names:
        return False
    by_lower: dict[str, str] = {}
    for name in names:
        by_lower.setdefault(name.lower(), name)
    close = difflib.get_close_matches(service.lower(), list(by_lower), n=3, cutoff=0.6)
    hint = "; did you mean " + " or ".join(by_lower[c] for c in close) + "?" if close else ""
    if not names:
        hint = "; no service has stored objects there"
    note(
        f"nothing is stored for service {service!r} in namespace {conn.namespace!r} "
        f"at {redact(conn.url)}{hint}",
        conn,
    )
    return True


def report_skipped(skipped: SkippedKeys, conn: Connection) -> None:
    """One line on stderr naming a few of the keys a listing skipped."""
    if skipped.count:
        shown = ", ".join(skipped.examples)
        more = ", ..." if skipped.count > len(skipped.examples) else ""
        note(
            f"skipped {plural(skipped.count, 'key')} that restate-redis did not write: "
            f"{shown}{more}",
            conn,
        )


def report_sealed(state: ObjectState, conn: Connection) -> None:
    """One line on stderr when some values are encrypted under keys this command lacks."""
    if not state.sealed:
        return
    ids = sorted({state.key_ids.get(name, "?") for name in state.sealed})
    have = "" if os.environ.get(ENV_KEYS) or os.environ.get(ENV_KEYS_FILE) else "out"
    note(
        f"{plural(len(state.sealed), 'value')} of {state.service}/{state.key} "
        f"{'is' if len(state.sealed) == 1 else 'are'} encrypted under key id "
        f'{", ".join(ids)}, shown as {{"$encrypted": ...}}: this command runs with{have} '
        f"keys ({ENV_KEYS}) and cannot read {'it' if len(state.sealed) == 1 else 'them'}"
        + ("" if have else f"; {next(iter(state.sealed.values()))}"),
        conn,
    )


def done(message: str) -> None:
    click.echo(printable(message))


# -- commands ---------------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES_HELP)
def kv() -> None:
    """Read and edit the K/V state of Virtual Objects and Workflows.

    Every command names the object as SERVICE KEY or SERVICE/KEY. Values are shown as
    JSON; bytes as {"$base64": "..."}, undecodable values as {"$raw": "..."} (both written
    back unchanged).

    \b
    Exit codes:
      0  success
      1  a failure, with one line on stderr
      2  a usage error
      3  a version conflict: the object changed since it was read; nothing was written
      4  the UI could not listen on its address (restate-redis ui)
      5  no history: the object has none, or a restore reaches further back than
         it keeps; nothing was written
    """


@kv.command("get")
@addressed()
@click.option("--plain", is_flag=True, help="Print one JSON object {state key: value} only.")
@click.option(
    "--watch",
    is_flag=True,
    help="Then print each change as it lands, until Ctrl-C (needs the object's history; "
    "with --plain one JSON line per change).",
)
@connection_options
def kv_get(service: str, key: str, plain: bool, watch: bool, conn: Connection) -> None:
    """Show the state of object (or workflow) KEY of SERVICE."""

    async def read(admin: Admin) -> ObjectState:
        state = await admin.read(service, key)
        if not state.exists and not state.values:
            await report_missing_service(admin, conn, service)
        return state

    state = run(conn, read)
    report_sealed(state, conn)
    if plain:
        click.echo(dumps(state.values))
    else:
        print_state(state)
    if watch:
        watch_changes(service, key, state.version, plain, conn)


def print_state(state: ObjectState) -> None:
    """``kv get``'s table of an object's state."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    # Text() cells: a value is data, never rich markup
    console = Console(soft_wrap=False)
    console.print(Text(printable(describe(state))))
    table = Table()
    table.add_column("key", overflow="fold")
    table.add_column("value", overflow="fold")
    table.add_column("bytes", justify="right")
    key_ids = state.key_ids
    if state.expiries:  # keys with an expiry of their own: the time each has left
        table.add_column("expires in", justify="right")
    for name, value in state.values.items():
        size = str(state.sizes[name])
        if name in key_ids:
            size += f"\nencrypted, key {key_ids[name]}"
        shown = dumps(value, indent=2)  # JSON text, already safe for a terminal
        if name in state.sealed:
            shown = printable(f"(encrypted under key {key_ids[name]}: not readable here)")
        row = [Text(printable(name)), Text(shown), Text(printable(size))]
        if state.expiries:
            left = state.expiries.get(name)
            row.append(Text("" if left is None else duration(left)))
        table.add_row(*row)
    if state.values:
        console.print(table)


def _edited_state(text: str) -> dict[str, Any]:
    """The edited text as a state document; ValueError saying where it is not one."""
    doc = load_json(text)
    if not isinstance(doc, dict):
        start = len(text) - len(text.lstrip())
        raise json.JSONDecodeError(
            f"the state must be a JSON object {{state key: value}}, got {type(doc).__name__}",
            text,
            start,
        )
    return doc


def _keep(text: str, service: str, key: str) -> str:
    """Save edited text that could not be stored, so that it is never lost; its path."""
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in f"{service}-{key}")[:60]
    fd, path = tempfile.mkstemp(prefix=f"restate-redis-{safe}-", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    return path


def _reopen(problem: str) -> bool:
    try:
        return click.confirm(f"{problem}\nRe-open the editor on your text?", default=True, err=True)
    except click.Abort:  # Ctrl-C or end of input: a no, and the text is still kept
        click.echo(err=True)
        return False


# -- history ------------------------------------------------------------------------------------


def parse_time(text: str) -> datetime:
    """``--at``/``--since`` times: ISO 8601 (``2026-05-01T12:00:00Z``; without a zone, local
    time) or a duration ago (``10m``, ``2h``, ``1d``), as an aware UTC datetime."""
    spec = text.strip()
    try:
        when = datetime.fromisoformat(spec.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        try:
            return datetime.now(UTC) - parse_duration(spec)
        except ValueError:
            raise ValueError(
                f"{text!r} is not a time: write ISO 8601 (2026-05-01T12:00:00Z, or without a "
                f"zone for local time) or a duration ago (30s, 10m, 2h, 1d)"
            ) from None
    if when.tzinfo is None:
        when = when.astimezone()  # local time
    return when.astimezone(UTC)


def time_option(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


def no_history(service: str, key: str, conn: Connection) -> NoReturn:
    fail(
        f"no history is kept for {service!r}/{key!r} in namespace {conn.namespace!r}: the "
        f"workers' store keeps it with history=History(...) (see docs/guide/history.md)",
        conn,
        EXIT_NO_HISTORY,
    )


def _side(change: dict[str, Any], side: str, kept: bool) -> str:
    if side in change:
        return dumps(change[side])
    return "(absent)" if kept else "(not kept)"


def change_lines(row: dict[str, Any]) -> list[str]:
    """``name: old -> new`` per changed key of a history row (Admin.entry_view)."""
    kept = row["values_kept"]
    lines = ["(clear_all)"] if row["cleared_all"] else []
    for name, change in row["changes"].items():
        old, new = _side(change, "old", kept), _side(change, "new", kept)
        lines.append(f"{printable(name)}: {old} -> {new}")
    return lines


def entry_line(row: dict[str, Any]) -> str:
    """One line for one history entry (``kv get --watch``)."""
    head = f"version {row['version']}  {row['at']}  {row['origin']}"
    if row["commit_id"]:
        head += f"  {row['commit_id']}"
    return printable(head) + "  " + "; ".join(change_lines(row))


@kv.command("history")
@addressed()
@click.option(
    "--since",
    default=None,
    metavar="VERSION|TIME",
    help="Only the commits after this version, or after this time (ISO 8601, or a duration "
    "ago: 10m, 2h).",
)
@count_option(
    "--limit",
    0,
    "At most this many: the last ones (with --since, the first after it); 0 all.",
    least=0,
)
@click.option("--plain", is_flag=True, help="One JSON object per commit, one per line.")
@connection_options
def kv_history(
    service: str, key: str, since: str | None, limit: int, plain: bool, conn: Connection
) -> None:
    """Show the history of SERVICE KEY: each commit the log keeps, oldest first, with what it
    changed (needs the workers' store to keep history)."""
    since_version: int | None = None
    since_time: datetime | None = None
    if since is not None:
        if since.strip().isdigit():
            since_version = int(since)
        else:
            try:
                since_time = parse_time(since)
            except ValueError as exc:
                raise click.BadParameter(str(exc), param_hint="'--since'") from None

    async def read(admin: Admin) -> tuple[list[dict[str, Any]], bool]:
        rows = await admin.history(
            service, key, since_version, None if since_time is not None or not limit else limit
        )
        if since_time is not None:
            cut = since_time.isoformat(timespec="milliseconds").replace("+00:00", "Z")
            rows = [row for row in rows if row["at"] > cut]
            if limit:
                rows = rows[:limit]
        kept = bool(rows) or bool(await admin.store.history(service, key, limit=1))
        return rows, kept

    rows, kept = run(conn, read)
    if not kept:
        no_history(service, key, conn)
    if plain:
        for row in rows:
            click.echo(dumps(row))
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(soft_wrap=False)
    table = Table(title=Text(printable(f"history of {service}/{key}")), title_justify="left")
    table.add_column("version", justify="right")
    table.add_column("at (UTC)")
    table.add_column("origin")
    table.add_column("commit id", overflow="fold")
    table.add_column("changes", overflow="fold")
    for row in rows:
        table.add_row(
            str(row["version"]),
            row["at"],
            Text(printable(row["origin"])),
            Text(printable(row["commit_id"] or "")),
            Text("\n".join(change_lines(row))),
        )
    console.print(table)


@kv.command("restore")
@addressed()
@click.option(
    "--version",
    "version",
    type=click.IntRange(min=0),
    default=None,
    help="The version to go back to.",
)
@click.option(
    "--at",
    "at",
    callback=time_option,
    default=None,
    metavar="TIME",
    help="Go back to the state at this time: ISO 8601 (2026-05-01T12:00:00Z) or a duration "
    "ago (10m, 2h).",
)
@click.option(
    "--expect-version", type=int, default=None, help="Refuse unless the object is at this version."
)
@connection_options
def kv_restore(
    service: str,
    key: str,
    version: int | None,
    at: datetime | None,
    expect_version: int | None,
    conn: Connection,
) -> None:
    """Put SERVICE KEY back to the state of --version or --at, as a new commit (under the
    object's lease, like any change; undo it with 'kv undo'). Needs the object's history."""
    if (version is None) == (at is None):
        raise click.UsageError("give exactly one of --version and --at")
    new = run(
        conn,
        lambda admin: admin.store.restore(
            service, key, version=version, at=at, expected_version=expect_version
        ),
    )
    target = f"version {version}" if at is None else at.isoformat(timespec="milliseconds")
    done(f"restored {service}/{key} to {target}: version {new}")


@kv.command("undo")
@addressed()
@click.option(
    "--expect-version", type=int, default=None, help="Refuse unless the object is at this version."
)
@connection_options
def kv_undo(service: str, key: str, expect_version: int | None, conn: Connection) -> None:
    """Undo the last commit of SERVICE KEY: restore the version before it, as a new commit
    (an undo of a restore or of an undo goes back to the state before it)."""
    new = run(conn, lambda admin: admin.store.undo(service, key, expected_version=expect_version))
    done(f"undid the last commit of {service}/{key}: version {new}")


def watch_changes(service: str, key: str, since: int, plain: bool, conn: Connection) -> None:
    """Print each commit after version ``since`` as it lands, until Ctrl-C."""

    async def follow(admin: Admin) -> None:
        stream = admin.keyspace.object_keys(service, key).history
        if not await admin.client.exists(stream):
            note(
                f"no history is kept for {service}/{key} yet: a change shows here once the "
                f"workers' store keeps history (history=History(...)); waiting",
                conn,
            )
        async for entry in admin.store.watch(service, key, since_version=since):
            row = admin.entry_view(entry)
            click.echo(dumps(row) if plain else entry_line(row))

    with contextlib.suppress(KeyboardInterrupt):
        run(conn, follow)


@kv.command("edit")
@addressed()
@click.option("--force", is_flag=True, help="Replace even if the object changed meanwhile.")
@connection_options
def kv_edit(service: str, key: str, force: bool, conn: Connection) -> None:
    """Edit the whole state as JSON in $EDITOR, then replace it in one atomic step.

    The replacement is refused (exit 3, nothing written) when the object changed while the
    editor was open, unless --force. Text that cannot be stored is never lost: on a terminal
    the editor can be re-opened on it, otherwise it is kept in a file whose path is printed.
    """
    state = run(conn, lambda admin: admin.read(service, key))
    if not state.exists:
        fail(f"{service!r}/{key!r} does not exist (create state with 'kv set')", conn)
    before = dumps(state.values, indent=2) + "\n"
    text = before
    while True:
        try:
            edited = click.edit(text, extension=".json")
        except click.ClickException as exc:
            problem = exc.format_message()
            if text != before:
                problem += f"; your edited text is kept in {_keep(text, service, key)}"
            fail(problem, conn)
        if edited is None:  # not saved: the text is what the editor was opened on
            edited = text
        if edited == before:
            done("no change; nothing written")
            return
        try:
            new = _edited_state(edited)
            break
        except ValueError as exc:
            problem = f"bad JSON for the state of {service!r}/{key!r}: {exc}"
            if sys.stdin.isatty() and _reopen(problem):
                text = edited
                continue
            fail(f"{problem}; your edited text is kept in {_keep(edited, service, key)}", conn)
    if same_value(new, state.values):
        done("no change; nothing written")
        return
    expected = None if force else state.version

    async def replace(admin: Admin) -> int:
        try:
            return await admin.replace(service, key, new, expected_version=expected)
        except Exception as exc:
            # the message is what the user sees: it must say where their text went
            exc.args = (f"{exc}; your edited text is kept in {_keep(edited, service, key)}",)
            raise

    version = run(conn, replace)
    done(f"replaced the state of {service}/{key}: version {version}")


@kv.command("patch")
@addressed()
@click.option("--patch", "patch_text", required=True, help="An RFC 6902 JSON Patch (a list).")
@click.option(
    "--expect-version", type=int, default=None, help="Refuse unless the object is at this version."
)
@connection_options
def kv_patch(
    service: str, key: str, patch_text: str, expect_version: int | None, conn: Connection
) -> None:
    """Apply a JSON Patch to the state, seen as one JSON object {state key: value}.

    The patch applies under the object's lease to the very state it replaces.
    """
    ops = parse_json(patch_text, "--patch")
    version = run(
        conn, lambda admin: admin.patch(service, key, ops, expected_version=expect_version)
    )
    done(f"patched {service}/{key}: version {version}")


# A value such as -1 or -Infinity is the JSON argument, not an unknown option.
@kv.command("set", context_settings={"ignore_unknown_options": True})
@addressed("NAME", "JSON:value")
@click.option(
    "--expect-version", type=int, default=None, help="Refuse unless the object is at this version."
)
@click.option(
    "--ttl",
    metavar="DURATION",
    callback=duration_option,
    default=None,
    help="The key expires this long after the set: 30s, 10m, 1h, 2d, 1h30m "
    "(Redis 7.4+ or Valkey 9+). Without it the key's expiry, if any, ends when its value changes.",
)
@connection_options
def kv_set(
    service: str,
    key: str,
    name: str,
    value: str,
    expect_version: int | None,
    ttl: timedelta | None,
    conn: Connection,
) -> None:
    """Set state key NAME of SERVICE/KEY to the JSON value JSON (creates the object)."""
    hint = ""
    if not value.lstrip().startswith(("{", "[", '"')):  # likely a bare string
        quoted = shlex.quote(json.dumps(value, ensure_ascii=False))
        hint = f" (the value is JSON: to store the string {value!r}, quote it as {quoted})"
    data = parse_json(value, f"state key {name!r}", hint)
    version = run(
        conn,
        lambda admin: admin.set(service, key, name, data, expected_version=expect_version, ttl=ttl),
    )
    expiry = "" if ttl is None else f", expires in {duration(int(ttl.total_seconds() * 1000))}"
    done(f"set {service}/{key} {name}: version {version}{expiry}")


@kv.command("clear")
@click.argument("words", nargs=-1, metavar="SERVICE [KEY [NAME]]")
@click.option("--yes", "-y", is_flag=True, help="Clear a whole service without asking.")
@click.option(
    "--expect-version", type=int, default=None, help="Refuse unless the object is at this version."
)
@connection_options
def kv_clear(
    words: tuple[str, ...], yes: bool, expect_version: int | None, conn: Connection
) -> None:
    """Clear one state key (SERVICE KEY NAME), one object (SERVICE KEY) or a whole SERVICE.

    SERVICE/KEY may stand for SERVICE KEY. Clearing a whole service asks first (--yes
    does not).
    """
    if len(words) == 1 and "/" not in words[0]:
        clear_service(words[0], yes, expect_version, conn)
        return
    service, key, (name,) = address(words, ["NAME"], optional=1)
    if name is not None:
        run(conn, lambda admin: admin.clear(service, key, name, expected_version=expect_version))
        done(f"cleared {service}/{key} {name}")
    else:
        run(conn, lambda admin: admin.clear_all(service, key, expected_version=expect_version))
        done(f"cleared {service}/{key}")


@kv.command("purge")
@addressed()
@connection_options
def kv_purge(service: str, key: str, conn: Connection) -> None:
    """Remove object (or workflow) SERVICE KEY entirely: its state and its bookkeeping.

    Like Restate's 'invocation purge': the version, the workflow status and the replay
    records go too, so a completed workflow's id can run again. Waits for a running handler
    (the object's lease), like every change.
    """
    if run(conn, lambda admin: admin.purge(service, key)):
        done(f"purged {service}/{key}")
    else:
        done(f"{service}/{key} held nothing; nothing purged")


def clear_service(service: str, yes: bool, expect_version: int | None, conn: Connection) -> None:
    if expect_version is not None:
        raise click.UsageError("--expect-version needs one object: SERVICE KEY")
    skipped = SkippedKeys()

    async def count(admin: Admin) -> int:
        found = sum([1 async for _ in admin.iter_objects(service, skipped=skipped)])
        if not found:
            await report_missing_service(admin, conn, service)
        return found

    objects = run(conn, count)
    report_skipped(skipped, conn)
    if objects == 0:
        done(f"service {service} has no objects in namespace {conn.namespace}; nothing cleared")
        return
    if not yes:
        which = "the 1 object" if objects == 1 else f"all {plural(objects, 'object')}"
        click.confirm(
            printable(
                f"Clear the state of {which} of service {service} (namespace {conn.namespace})?"
            ),
            abort=True,
            err=True,
        )
    cleared = run(conn, lambda admin: admin.clear_service(service))
    done(f"cleared {plural(cleared, 'object')} of service {service}")


@kv.command("list")
@click.argument("service")
@click.option("--prefix", default="", help="Only object keys starting with this.")
@click.option("--plain", is_flag=True, help="Object keys only, one per line.")
@connection_options
def kv_list(service: str, prefix: str, plain: bool, conn: Connection) -> None:
    """List the object keys of SERVICE, streamed as SCAN finds them (unsorted).

    Only objects with stored state are listed, and workflows.
    """
    skipped = SkippedKeys()

    async def stream(admin: Admin) -> None:
        cursor = 0
        listed: set[str] = set()  # an object's keys may come on two pages
        while True:
            page = await admin.list_objects(service, prefix, cursor, limit=500)
            skipped.merge(page.skipped)
            for obj in page.objects:
                if obj.key in listed:
                    continue
                listed.add(obj.key)
                if plain or obj.workflow_status is None:
                    click.echo(printable(obj.key))
                    continue
                line = f"{printable(obj.key)}\tworkflow {printable(obj.workflow_status)}"
                if obj.retention_ms is not None:
                    line += f", state expires in {duration(obj.retention_ms)}"
                click.echo(line)
            cursor = page.cursor
            if cursor == 0:
                break
        if not listed and not await report_missing_service(admin, conn, service) and prefix:
            note(f"no object of service {service!r} has a key starting with {prefix!r}", conn)

    run(conn, stream)
    report_skipped(skipped, conn)


@click.command(
    "services", context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES_HELP
)
@click.option("--plain", is_flag=True, help="Service names only, one per line.")
@connection_options
def services(plain: bool, conn: Connection) -> None:
    """List the services that have stored state, with their object counts."""
    found = run(conn, lambda admin: admin.services())
    if not found:
        note(
            f"no service has stored objects in namespace {conn.namespace!r} at {redact(conn.url)}",
            conn,
        )
    if plain:
        for svc in found:
            click.echo(printable(svc.name))
    else:
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        table = Table(title=Text(printable(f"namespace {conn.namespace}")), title_justify="left")
        table.add_column("service")
        table.add_column("objects", justify="right")
        for svc in found:
            table.add_row(Text(printable(svc.name)), str(svc.objects))
        Console().print(table)
    report_skipped(found.skipped, conn)
