"""``restate-redis kv ...`` and ``restate-redis services``: inspect and edit state from a shell.

Every command takes ``--url`` (env ``RESTATE_REDIS_URL``), ``--namespace`` (env
``RESTATE_REDIS_NAMESPACE``) and ``--serde`` (env ``RESTATE_REDIS_SERDE``), and goes through
:mod:`restate_redis.admin`: changes take the object's lease like a handler and land in one
atomic commit.

Exit codes: 0 success; 1 any failure, with one line on stderr; 2 a usage error; 3 a version
conflict (the object changed since it was read; nothing was written).
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import shlex
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar
from urllib.parse import unquote

import click
from redis.exceptions import RedisError

from .admin import Admin, ObjectState, load_json, same_value
from .errors import StateError, StoreUnavailableError, VersionConflictError
from .serde import BytesSerde, JsonSerde, MsgPackSerde, Serde
from .store import RedisStateStore

T = TypeVar("T")

ENV_URL = "RESTATE_REDIS_URL"
ENV_NAMESPACE = "RESTATE_REDIS_NAMESPACE"
ENV_SERDE = "RESTATE_REDIS_SERDE"
DEFAULT_URL = "redis://127.0.0.1:6379/0"

EXIT_FAILURE = 1
EXIT_CONFLICT = 3

SERDES: dict[str, Callable[[], Serde[Any]]] = {
    "msgpack": MsgPackSerde,
    "json": JsonSerde,
    "bytes": BytesSerde,
}


# -- connection -------------------------------------------------------------------------------


def _userinfo(url: str) -> tuple[str, str, str, str] | None:
    """(scheme + "://", user, password, host part) of a URL with credentials, else None.

    Parsed by hand so that a malformed URL (a typo in the scheme) still hides its password.
    """
    head, at, host = url.rpartition("@")
    if not at:
        return None
    scheme, sep, userinfo = head.rpartition("://")
    user, colon, password = userinfo.partition(":")
    if not colon:  # "redis://secret@host": the lone part may well be a password
        user, password = "", userinfo
    return scheme + sep, user, password, host


def redact_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``."""
    parts = _userinfo(url)
    if parts is None or not parts[2]:
        return url
    scheme, user, _, host = parts
    return f"{scheme}{user}:***@{host}" if user else f"{scheme}***@{host}"


def _secrets(url: str) -> list[str]:
    parts = _userinfo(url)
    if parts is None or not parts[2]:
        return []
    return sorted({parts[2], unquote(parts[2])}, key=len, reverse=True)


@dataclass(frozen=True, slots=True)
class Connection:
    """Where the state lives, from the common options."""

    url: str
    namespace: str
    serde: str
    acquire_timeout: float

    def open_store(self) -> RedisStateStore:
        return RedisStateStore.from_url(
            self.url,
            namespace=self.namespace,
            serde=SERDES[self.serde](),
            acquire_timeout=self.acquire_timeout,
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


def fail(message: str, conn: Connection | None = None, code: int = EXIT_FAILURE) -> NoReturn:
    """Print one line on stderr (never the URL's password) and exit with ``code``."""
    text = " ".join(str(message).split())
    if conn is not None:
        text = text.replace(conn.url, redact_url(conn.url))
        for secret in _secrets(conn.url):
            text = text.replace(secret, "***")
    click.echo(f"restate-redis: error: {text}", err=True)
    sys.exit(code)


def run(conn: Connection, action: Callable[[Admin], Awaitable[T]]) -> T:
    """Run ``action`` on a store for ``conn``; every failure becomes a one-line message."""

    async def main() -> T:
        store = conn.open_store()
        try:
            return await action(Admin(store))
        finally:
            await store.aclose()

    try:
        return asyncio.run(main())
    except VersionConflictError as exc:
        fail(str(exc), conn, EXIT_CONFLICT)
    except StoreUnavailableError as exc:
        fail(f"Redis at {redact_url(conn.url)}: {exc}", conn)
    except StateError as exc:
        fail(str(exc), conn)
    except (RedisError, OSError) as exc:
        fail(f"Redis at {redact_url(conn.url)}: {exc}", conn)
    except ValueError as exc:  # a bad URL, a bad option value
        fail(str(exc), conn)


def parse_json(text: str, what: str, hint: str = "") -> Any:
    """``text`` as JSON; a clear one-line failure (with ``hint`` appended) when it is not.

    NaN, Infinity and numbers too large for a float are refused: JSON cannot carry them.
    """
    try:
        return load_json(text)
    except ValueError as exc:
        fail(f"bad JSON for {what}: {exc}{hint}")


def dumps(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=False, sort_keys=indent is not None)


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


def describe(state: ObjectState) -> str:
    """One line about an object: version, kind, workflow status and remaining retention."""
    text = f"{state.service}/{state.key}: version {state.version}"
    if not state.exists:
        return text + " (no state stored)"
    if state.workflow_status is not None:
        text += f", workflow {state.workflow_status}"
    if state.retention_ms is not None:
        text += f", state expires in {duration(state.retention_ms)}"
    return text


def split_target(target: str) -> tuple[str, str | None]:
    """``SERVICE/KEY`` -> (service, key); ``SERVICE`` -> (service, None)."""
    service, sep, key = target.partition("/")
    if not service:
        fail(f"bad target {target!r}: expected SERVICE or SERVICE/KEY")
    return service, key if sep else None


def done(message: str) -> None:
    click.echo(message)


# -- commands ---------------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def kv() -> None:
    """Read and edit the K/V state of Virtual Objects and Workflows.

    Values are shown as JSON; bytes as {"$base64": "..."}, undecodable values as
    {"$raw": "..."} (both written back unchanged). Exit codes: 0 ok, 1 failure, 2 usage,
    3 version conflict.
    """


@kv.command("get")
@click.argument("service")
@click.argument("key")
@click.option("--plain", is_flag=True, help="Print one JSON object {state key: value} only.")
@connection_options
def kv_get(service: str, key: str, plain: bool, conn: Connection) -> None:
    """Show the state of object (or workflow) KEY of SERVICE."""
    state = run(conn, lambda admin: admin.read(service, key))
    if plain:
        click.echo(dumps(state.values))
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    # Text() cells: a value is data, never rich markup
    console = Console(soft_wrap=False)
    console.print(Text(describe(state)))
    table = Table()
    table.add_column("key", overflow="fold")
    table.add_column("value", overflow="fold")
    table.add_column("bytes", justify="right")
    for name, value in state.values.items():
        table.add_row(Text(name), Text(dumps(value, indent=2)), str(state.sizes[name]))
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


@kv.command("edit")
@click.argument("service")
@click.argument("key")
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
@click.argument("service")
@click.argument("key")
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
@click.argument("service")
@click.argument("key")
@click.argument("name")
@click.argument("value", metavar="JSON")
@click.option(
    "--expect-version", type=int, default=None, help="Refuse unless the object is at this version."
)
@connection_options
def kv_set(
    service: str, key: str, name: str, value: str, expect_version: int | None, conn: Connection
) -> None:
    """Set state key NAME of SERVICE/KEY to the JSON value JSON (creates the object)."""
    hint = ""
    if not value.lstrip().startswith(("{", "[", '"')):  # likely a bare string
        quoted = shlex.quote(json.dumps(value, ensure_ascii=False))
        hint = f" (the value is JSON: to store the string {value!r}, quote it as {quoted})"
    data = parse_json(value, f"state key {name!r}", hint)
    version = run(
        conn, lambda admin: admin.set(service, key, name, data, expected_version=expect_version)
    )
    done(f"set {service}/{key} {name}: version {version}")


@kv.command("clear")
@click.argument("target", metavar="SERVICE[/KEY]")
@click.argument("name", required=False)
@click.option("--yes", "-y", is_flag=True, help="Clear a whole service without asking.")
@click.option(
    "--expect-version", type=int, default=None, help="Refuse unless the object is at this version."
)
@connection_options
def kv_clear(
    target: str, name: str | None, yes: bool, expect_version: int | None, conn: Connection
) -> None:
    """Clear one state key (SERVICE/KEY NAME), one object (SERVICE/KEY) or a whole SERVICE."""
    service, key = split_target(target)
    if key is not None:
        if name is not None:
            run(
                conn,
                lambda admin: admin.clear(service, key, name, expected_version=expect_version),
            )
            done(f"cleared {service}/{key} {name}")
        else:
            run(conn, lambda admin: admin.clear_all(service, key, expected_version=expect_version))
            done(f"cleared {service}/{key}")
        return
    if name is not None or expect_version is not None:
        fail("a state key or --expect-version needs one object: SERVICE/KEY")

    async def count(admin: Admin) -> int:
        return sum([1 async for _ in admin.iter_objects(service)])

    objects = run(conn, count)
    if objects == 0:
        done(f"service {service} has no objects in namespace {conn.namespace}; nothing cleared")
        return
    if not yes:
        click.confirm(
            f"Clear the state of all {objects} objects of service {service} "
            f"(namespace {conn.namespace})?",
            abort=True,
            err=True,
        )
    cleared = run(conn, lambda admin: admin.clear_service(service))
    done(f"cleared {cleared} objects of service {service}")


@kv.command("list")
@click.argument("service")
@click.option("--prefix", default="", help="Only object keys starting with this.")
@click.option("--plain", is_flag=True, help="Object keys only, one per line.")
@connection_options
def kv_list(service: str, prefix: str, plain: bool, conn: Connection) -> None:
    """List the object keys of SERVICE, streamed as SCAN finds them (unsorted)."""

    async def stream(admin: Admin) -> None:
        cursor = 0
        while True:
            page = await admin.list_objects(service, prefix, cursor, limit=500)
            for obj in page.objects:
                if plain or obj.workflow_status is None:
                    click.echo(obj.key)
                    continue
                line = f"{obj.key}\tworkflow {obj.workflow_status}"
                if obj.retention_ms is not None:
                    line += f", state expires in {duration(obj.retention_ms)}"
                click.echo(line)
            cursor = page.cursor
            if cursor == 0:
                return

    run(conn, stream)


@click.command("services", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--plain", is_flag=True, help="Service names only, one per line.")
@connection_options
def services(plain: bool, conn: Connection) -> None:
    """List the services that have stored state, with their object counts."""
    found = run(conn, lambda admin: admin.services())
    if plain:
        for svc in found:
            click.echo(svc.name)
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(f"namespace {conn.namespace}"), title_justify="left")
    table.add_column("service")
    table.add_column("objects", justify="right")
    for svc in found:
        table.add_row(Text(svc.name), str(svc.objects))
    Console().print(table)
