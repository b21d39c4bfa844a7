"""``restate-redis ui``: a web page to browse and edit state, on Starlette served by uvicorn.

Listens on 127.0.0.1:9071 by default (``--port 0``: a free port, printed at start; a port
in use is a one-line error and exit code 4). Listening on any other address needs
``--token`` (or the env ``RESTATE_REDIS_UI_TOKEN``, printable ASCII); without it the command
refuses to start. The JSON
API the page uses is documented in :mod:`restate_redis.tools.ui.app`, the protections in
:mod:`restate_redis.tools.ui.security`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from typing import Any

import click

from ...backend.connection import redact
from ..kv import (
    EXIT_CANNOT_LISTEN,
    Connection,
    connection_options,
    count_option,
    eager_limit_options,
    fail,
    run,
)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9071
DEFAULT_MAX_RESPONSE_BYTES = 4 * 1024 * 1024  # as restate_redis.tools.ui.app, which needs starlette
DEFAULT_MAX_TABLE_OBJECTS = 10_000  # as well
ENV_TOKEN = "RESTATE_REDIS_UI_TOKEN"
STOP_GRACE_SECONDS = 3

__all__ = ["create_app", "ui_command"]


def create_app(*args: Any, **kwargs: Any) -> Any:
    """See :func:`restate_redis.tools.ui.app.create_app` (imported lazily: it needs starlette)."""
    from .app import create_app as create

    return create(*args, **kwargs)


def _where(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host``:``port`` and listening (port 0: a free one); any failure is
    one line and exit code 4. Bound here rather than by uvicorn, so that the command knows
    the port it got and can say clearly why it got none."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        fail(f"cannot listen on {_where(host, port)}: {exc}", code=EXIT_CANNOT_LISTEN)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # not past a live listener
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        why = (
            "the address is already in use (another program listens there; pick another "
            "--port, or --port 0 for a free one)"
            if exc.errno == errno.EADDRINUSE
            else (exc.strerror or str(exc))
        )
        fail(f"cannot listen on {_where(host, port)}: {why}", code=EXIT_CANNOT_LISTEN)
    return sock


@click.command("ui", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--host", default=DEFAULT_HOST, show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=DEFAULT_PORT,
    show_default=True,
    help="Port to listen on; 0 picks a free one (printed at start).",
)
@click.option(
    "--token",
    envvar=ENV_TOKEN,
    default=None,
    help=f"Secret every API request must carry (printable ASCII, at least 8 characters); "
    f"required off loopback; env {ENV_TOKEN}.",
)
@count_option(
    "--max-response-bytes",
    DEFAULT_MAX_RESPONSE_BYTES,
    "Largest answer for one object's page; beyond it the keys come page by page.",
    metavar="BYTES",
)
@count_option(
    "--max-table-objects",
    DEFAULT_MAX_TABLE_OBJECTS,
    "The most objects of a service one table sorts; narrow larger ones by key prefix.",
)
@connection_options
@eager_limit_options
def ui_command(
    host: str,
    port: int,
    token: str | None,
    max_response_bytes: int,
    max_table_objects: int,
    conn: Connection,
) -> None:
    """Serve the web UI to browse and edit state.

    Exit codes: 0 stopped normally; 1 a failure (one line on stderr); 2 a usage error;
    4 cannot listen on the address (the port is in use, say).
    """
    try:
        import uvicorn

        from .app import create_app as create
        from .security import check_token, is_loopback
    except ImportError as exc:
        fail(f"the UI needs extra packages ({exc.name}): pip install 'restate-redis[ui]'")
    loopback = is_loopback(host)
    if not loopback and not token:
        fail(
            f"refusing to listen on {host}, which is not a loopback address, without a token: "
            f"pass --token (or set {ENV_TOKEN})"
        )
    if token is not None:
        try:
            check_token(token)
        except ValueError as exc:
            fail(str(exc))
        if len(token) < 8:
            fail("the token must be at least 8 characters long")

    async def ping(admin: Any) -> None:
        await admin.client.ping()

    run(conn, ping)  # a clear one-line error now rather than on the first page load
    app = create(
        conn.open_store,
        token=token,
        loopback_only=loopback,
        max_response_bytes=max_response_bytes,
        url=conn.url,
        max_table_objects=max_table_objects,
    )
    sock = listen(host, port)
    bound = sock.getsockname()[1]
    click.echo(
        f"restate-redis UI on http://{_where(host, bound)}/ for {redact(conn.url)} "
        f"(namespace {conn.namespace})" + (" - open it with #token=YOUR_TOKEN" if token else ""),
        err=True,
    )
    # an open page's event stream (/api/watch) lasts as long as the page: on stop, give
    # responses a moment to finish, then cancel what is left rather than wait for browsers
    config = uvicorn.Config(
        app, log_level="warning", lifespan="on", timeout_graceful_shutdown=STOP_GRACE_SECONDS
    )
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(uvicorn.Server(config).serve(sockets=[sock]))
    finally:
        sock.close()
