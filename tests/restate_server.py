"""A real Restate server and a hypercorn deployment of SDK services, on free loopback ports.

The server and CLI come from npm (``@restatedev/restate-server`` and ``@restatedev/restate``,
binaries inside the packages), installed once into a cache folder
(``$RESTATE_REDIS_NPM_CACHE``, default ``~/.cache/restate-redis/npm``). The server runs the
native binary directly (not npm's node launcher), so stopping it by its process id stops it.
In CI a missing npm or a failed install is a failure, never a skip.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from restate_redis.tools.demo.restate import RESTATE_VERSION, npm_cache

from .servers import free_port, unavailable

ROOT = Path(__file__).resolve().parent.parent
NPM_CACHE = npm_cache()  # the demo's (restate-redis demo --restate): one install for both


def _unavailable(message: str) -> None:
    unavailable(message, note="skipping the Restate tests")


def _platform() -> str:
    arch = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower(), platform.machine().lower()
    )
    return f"{sys.platform}-{arch}"


def restate_binaries(cache: Path = NPM_CACHE) -> tuple[Path, Path]:
    """(restate-server, restate) native binaries, installed with npm into ``cache`` if missing."""
    plat = _platform()
    modules = cache / "node_modules" / "@restatedev"
    server = modules / f"restate-server-{plat}" / "bin" / "restate-server"
    cli = modules / f"restate-{plat}" / "bin" / "restate"
    if server.exists() and cli.exists():
        return server, cli
    npm = shutil.which("npm")
    if npm is None:
        _unavailable("npm is not installed, so the Restate server cannot be installed")
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [
        str(npm),
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
        _unavailable("npm install of the Restate server did not finish within 10 minutes")
        raise
    if done.returncode != 0 or not server.exists():
        _unavailable(f"npm install of the Restate server failed: {done.stderr[-2000:]}")
    return server, cli


def _cmdline(pid: int) -> bytes | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return None


def _children(pid: int) -> dict[int, bytes | None]:
    """The child processes of ``pid`` and their command lines (Linux /proc; empty where that
    is not available)."""
    kids: dict[int, bytes | None] = {}
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
                kids.update((int(k), _cmdline(int(k))) for k in f.read().split())
    return kids


def _stop(proc: subprocess.Popen[bytes] | None, timeout: float = 15.0) -> None:
    """End one process we started, by its pid: SIGTERM, then SIGKILL; then any of its
    children still running (hypercorn's worker processes ignore SIGTERM and would outlive a
    parent that did not stop them), by their pids."""
    if proc is None or proc.poll() is not None:
        return
    kids = _children(proc.pid)
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)
    for kid, cmdline in kids.items():
        if cmdline is not None and _cmdline(kid) == cmdline:  # still that process, not a reuse
            with contextlib.suppress(ProcessLookupError):
                os.kill(kid, signal.SIGKILL)


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
    """``hypercorn MODULE:app`` on a free loopback port, restarted whenever it dies.

    ``restarts`` counts the restarts; a handler that SIGKILLs its own process (to cut an
    invocation at a precise point) is back within a second or so, and Restate retries.
    """

    app: str
    env: dict[str, str]
    args: tuple[str, ...] = ()  # more hypercorn options
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
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        args = [sys.executable, "-m", "hypercorn", self.app, "--bind", f"127.0.0.1:{self.port}"]
        args += self.args
        with open(self.log, "ab") as log:
            return subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

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
) -> RestateStack:
    """Install if needed, start restate-server and ``hypercorn app``, register the deployment.

    ``env`` is the deployment's extra environment, ``server_env`` the server's (config
    overrides such as ``RESTATE_WORKER__INVOKER__INACTIVITY_TIMEOUT``).
    """
    binary, cli = restate_binaries()
    server = RestateServer(binary, cli, extra_env=server_env or {}).start()
    try:
        deployment = Deployment(app, env, hypercorn_args).start()
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
