"""``restate-redis ui``: a web page to browse and edit state, on Starlette served by uvicorn.

Listens on 127.0.0.1:9071 by default. Listening on any other address needs ``--token``
(or the env ``RESTATE_REDIS_UI_TOKEN``); without it the command refuses to start. The JSON
API the page uses is documented in :mod:`restate_redis.ui.app`, the protections in
:mod:`restate_redis.ui.security`.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import click

from ..cli_kv import Connection, connection_options, fail, redact_url, run

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9071
ENV_TOKEN = "RESTATE_REDIS_UI_TOKEN"

__all__ = ["create_app", "ui_command"]


def create_app(*args: Any, **kwargs: Any) -> Any:
    """See :func:`restate_redis.ui.app.create_app` (imported lazily: it needs starlette)."""
    from .app import create_app as create

    return create(*args, **kwargs)


@click.command("ui", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--host", default=DEFAULT_HOST, show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True)
@click.option(
    "--token",
    envvar=ENV_TOKEN,
    default=None,
    help=f"Secret every API request must carry; required off loopback; env {ENV_TOKEN}.",
)
@connection_options
def ui_command(host: str, port: int, token: str | None, conn: Connection) -> None:
    """Serve the web UI to browse and edit state."""
    try:
        import uvicorn

        from .app import create_app as create
        from .security import is_loopback
    except ImportError as exc:
        fail(f"the UI needs extra packages ({exc.name}): pip install 'restate-redis[ui]'")
    loopback = is_loopback(host)
    if not loopback and not token:
        fail(
            f"refusing to listen on {host}, which is not a loopback address, without a token: "
            f"pass --token (or set {ENV_TOKEN})"
        )
    if token is not None and len(token) < 8:
        fail("the token must be at least 8 characters long")

    async def ping(admin: Any) -> None:
        await admin.client.ping()

    run(conn, ping)  # a clear one-line error now rather than on the first page load
    app = create(conn.open_store, token=token, loopback_only=loopback)
    shown = f"[{host}]" if ":" in host else host
    click.echo(
        f"restate-redis UI on http://{shown}:{port}/ for {redact_url(conn.url)} "
        f"(namespace {conn.namespace})" + (" - open it with #token=YOUR_TOKEN" if token else ""),
        err=True,
    )
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(uvicorn.Server(config).serve())
