"""``restate-redis demo --restate``: the demo's services under a real Restate server.

restate-server (found on PATH, else in the npm cache folder, installed there with the user's
consent) runs on free loopback ports with its data and temporary files in a temporary folder;
hypercorn serves :mod:`restate_redis.tools.demo.examples.sdk` (restate-sdk handlers whose state
``@store.restate_state()`` keeps in Redis) in worker processes; the deployment is registered
through the admin API and every invocation of the plan goes through the ingress. Every
process started here is stopped by its pid at the end, and the temporary folder removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from .examples import cart, fulfilment
from .run import Invocation, WorkerReport, _progress_bar

RESTATE_VERSION = "1.7.12"
PACKAGE = "@restatedev/restate-server"
SDK_APP = "restate_redis.tools.demo.examples.sdk:app"
INSTALL_HINT = "pip install 'restate-redis[demo,restate]'"


def npm_cache() -> Path:
    """Where restate-server is installed with npm (shared with the test suite)."""
    default = Path.home() / ".cache" / "restate-redis" / "npm"
    return Path(os.environ.get("RESTATE_REDIS_NPM_CACHE", default))


def _platform() -> str:
    machine = platform.machine().lower()
    arch = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64"}.get(machine, machine)
    return f"{sys.platform}-{arch}"


def cached_binary(cache: Path) -> Path:
    """The native restate-server binary inside an npm install into ``cache``: run directly,
    not through npm's node launcher, so that stopping its pid stops the server."""
    plat = _platform()
    return (
        cache / "node_modules" / "@restatedev" / f"restate-server-{plat}" / "bin" / "restate-server"
    )


def _install_command(cache: Path) -> list[str]:
    return [
        "npm", "install", "--prefix", str(cache), "--no-audit", "--no-fund", "--loglevel=error",
        f"{PACKAGE}@{RESTATE_VERSION}",
    ]  # fmt: skip


def _interactive() -> bool:
    return sys.stdin.isatty()


def locate_server(yes: bool, console: Any) -> Path:
    """restate-server from PATH, else from the npm cache, else installed there (after asking,
    unless ``yes``)."""
    on_path = shutil.which("restate-server")
    if on_path is not None:
        return Path(on_path)
    cache = npm_cache()
    binary = cached_binary(cache)
    if binary.exists():
        return binary
    command = " ".join(_install_command(cache))
    if shutil.which("npm") is None:
        raise click.ClickException(
            "--restate needs restate-server: put it on PATH (https://docs.restate.dev), or "
            f"install Node.js with npm, then run: {command}"
        )
    if not yes:
        if not _interactive():
            raise click.ClickException(
                f"restate-server is not on PATH nor in {cache}: install it with `{command}`, "
                "or pass --yes to let the demo install it"
            )
        package = f"{PACKAGE}@{RESTATE_VERSION}"
        question = f"restate-server was not found. Install {package} into {cache}?"
        if not click.confirm(question, default=True):
            raise click.ClickException(f"restate-server is not installed; to install it: {command}")
    console.print(f"Installing {PACKAGE}@{RESTATE_VERSION} into {cache} with npm")
    cache.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(
            _install_command(cache), capture_output=True, text=True, timeout=900, check=False
        )
    except subprocess.TimeoutExpired:
        raise click.ClickException(f"`{command}` did not finish within 15 minutes") from None
    if done.returncode != 0 or not binary.exists():
        detail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise click.ClickException(
            f"`{command}` failed (exit {done.returncode}, {binary} missing): {detail[0]}"
        )
    return binary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- processes ---------------------------------------------------------------------------------


def _cmdline(pid: int) -> bytes | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return None


def _children(pid: int) -> dict[int, bytes | None]:
    """The child processes of ``pid`` with their command lines (Linux /proc; none elsewhere)."""
    kids: dict[int, bytes | None] = {}
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
                kids.update((int(k), _cmdline(int(k))) for k in f.read().split())
    return kids


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """Stop a process started here, by its pid (SIGTERM, then SIGKILL), then its children
    still running (hypercorn's workers), by theirs."""
    if proc.poll() is not None:
        return
    kids = _children(proc.pid)
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


class Stack:
    """restate-server and the hypercorn deployment, in one temporary folder."""

    def __init__(self, binary: Path, redis_url: str, workers: int, retention: float) -> None:
        self.binary = binary
        self.redis_url = redis_url
        self.workers = workers
        self.retention = retention
        self.dir = Path(tempfile.mkdtemp(prefix="restate-redis-demo-", dir=_fast_dir()))
        self.tmp = self.dir / "tmp"
        self.tmp.mkdir()
        self.ingress_port, self.admin_port, self.node_port = free_port(), free_port(), free_port()
        self.deployment_port = free_port()
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def ingress(self) -> str:
        return f"http://127.0.0.1:{self.ingress_port}"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def deployment(self) -> str:
        return f"http://127.0.0.1:{self.deployment_port}"

    def _spawn(self, args: list[str], env: dict[str, str], log: str) -> subprocess.Popen[bytes]:
        # TMPDIR: restate-server puts its invoker spill folders there, outside its base dir.
        env = {**os.environ, **env, "TMPDIR": str(self.tmp)}
        with open(self.dir / log, "ab") as out:
            proc = subprocess.Popen(
                args,
                cwd=self.dir,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches the demo, which stops them in order
            )
        self.procs.append(proc)
        return proc

    def start(self) -> None:
        args = [str(self.binary), "--bind-ip", "127.0.0.1", "--listen-mode", "tcp", "--no-logo"]
        args += ["--base-dir", str(self.dir / "data"), "--node-name", "restate-redis-demo"]
        server = self._spawn(
            args,
            {
                "RESTATE_DISABLE_TELEMETRY": "true",
                "RESTATE_INGRESS__BIND_PORT": str(self.ingress_port),
                "RESTATE_ADMIN__BIND_PORT": str(self.admin_port),
                "RESTATE_BIND_PORT": str(self.node_port),
                "RESTATE_WORKER__INVOKER__TMP_DIR": str(self.tmp),
                "RESTATE_DEFAULT_NUM_PARTITIONS": "4",
                "RESTATE_ROCKSDB_TOTAL_MEMORY_SIZE": "512MB",
            },
            "restate-server.log",
        )
        config = self.dir / "hypercorn.toml"
        # Restate runs every invocation as a stream of one HTTP/2 connection; hypercorn's
        # default closes it after 1,000 requests, stalling the streams in flight for a minute.
        config.write_text(
            f'bind = ["127.0.0.1:{self.deployment_port}"]\n'
            f"workers = {self.workers}\n"
            "keep_alive_max_requests = 1000000000\n"
        )
        package_root = str(Path(__file__).resolve().parent.parent)  # this copy of restate_redis
        pythonpath = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
        deployment = self._spawn(
            [sys.executable, "-m", "hypercorn", "-c", str(config), SDK_APP],
            {
                "PYTHONPATH": pythonpath,
                "RESTATE_REDIS_URL": self.redis_url,
                "RESTATE_REDIS_DEMO_RETENTION": repr(self.retention),
            },
            "hypercorn.log",
        )
        self._wait_http(f"{self.admin}/health", server, "restate-server.log")
        self._wait_http(f"{self.ingress}/restate/health", server, "restate-server.log")
        self._wait_http(f"{self.deployment}/health", deployment, "hypercorn.log")
        self._register()

    def _wait_http(
        self, url: str, proc: subprocess.Popen[bytes], log: str, timeout: float = 60
    ) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            if proc.poll() is not None or time.monotonic() > deadline:
                raise click.ClickException(
                    f"{url} did not come up (exit status {proc.poll()}): {self._tail(log)}"
                )
            time.sleep(0.05)

    def _tail(self, log: str) -> str:
        with contextlib.suppress(OSError):
            lines = (self.dir / log).read_text(errors="replace").strip().splitlines()
            return " | ".join(lines[-3:]) or "no output"
        return "no output"

    def _register(self, timeout: float = 30) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while True:
            try:
                r = httpx.post(
                    f"{self.admin}/deployments", json={"uri": self.deployment}, timeout=10
                )
                if r.status_code in (200, 201):
                    return
                why = f"{r.status_code} {r.text.strip()[:300]}"
            except httpx.HTTPError as exc:
                why = str(exc)
            if time.monotonic() > deadline:
                raise click.ClickException(f"registering {self.deployment} failed: {why}")
            time.sleep(0.2)

    def stop(self) -> None:
        """Stop every process (the deployment first), then remove the folder."""
        for proc in reversed(self.procs):
            stop_process(proc)
        self.procs.clear()
        shutil.rmtree(self.dir, ignore_errors=True)


def _fast_dir() -> str | None:
    # tmpfs where there is one: Restate fsyncs its log on every append, which costs 10 to
    # 20 ms per invocation on a virtual disk and would measure the disk, not Restate or Redis.
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


@contextlib.contextmanager
def running(binary: Path, redis_url: str, workers: int, retention: float) -> Iterator[Stack]:
    """A started :class:`Stack`, stopped (and its folder removed) however the block ends."""
    stack = Stack(binary, redis_url, workers, retention)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


# -- driving the plan through the ingress ------------------------------------------------------


async def _call(client: Any, report: WorkerReport, inv: Invocation) -> None:
    handler, key, sku, qty = inv
    path = f"/{cart.SERVICE}/{key}/"
    if handler == "view":
        r = await client.post(path + "view")
    elif handler == "checkout":
        r = await client.post(path + "checkout")
    else:
        r = await client.post(path + f"{handler}_item", json={"sku": sku, "qty": qty})
    if r.status_code != 200:
        raise RuntimeError(f"HTTP {r.status_code} {r.text.strip()[:200]}")
    result = r.json()
    if handler == "view":
        return
    if handler == "add":
        report.added[key, sku] += qty
    elif handler == "remove":
        report.removed[key, sku] += int(result)
    elif result["order_id"] is not None:
        report.orders[result["order_id"]] = (key, result["items"])
    report.exclusive[key] += 1


async def drive(
    ingress: str, plan: list[Invocation], in_flight: int, progress: Any
) -> tuple[WorkerReport, float]:
    """Run the plan through the ingress, ``in_flight`` invocations at a time."""
    import httpx

    report = WorkerReport()
    limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)
    todo = iter(plan)
    async with httpx.AsyncClient(base_url=ingress, timeout=120, limits=limits) as client:

        async def loop() -> None:
            for inv in todo:
                started = time.perf_counter()
                try:
                    await _call(client, report, inv)
                except (httpx.HTTPError, RuntimeError, ValueError) as exc:
                    report.errors.append(f"{inv[0]} {inv[1]}: {type(exc).__name__}: {exc}")
                report.latency[inv[0]].append(time.perf_counter() - started)
                progress()

        started = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(in_flight)))
        elapsed = time.perf_counter() - started
    report.latency = dict(report.latency)
    return report, elapsed


def run(
    binary: Path,
    url: str,
    plan: list[Invocation],
    workers: int,
    concurrency: int,
    retention: float,
    console: Any,
) -> tuple[WorkerReport, float]:
    """Start the stack, drive the plan through it, stop it; returns the report and the time."""
    with running(binary, url, workers, retention) as stack:
        lines = [
            f"Restate server: {binary} (ingress {stack.ingress}, admin {stack.admin}), its "
            f"data and logs in {stack.dir} (removed at the end)",
            f"Handlers: the restate-sdk services of {SDK_APP.split(':')[0]}, state kept in Redis "
            f"by @store.restate_state(), served by hypercorn with {workers} worker process(es) "
            f"on {stack.deployment}, registered with the server",
            f"Every invocation goes through the ingress; {cart.SERVICE}.checkout calls the "
            f"{fulfilment.SERVICE} workflow through Restate.",
        ]
        for line in lines:
            console.print(line, soft_wrap=True, markup=False, highlight=False)
        with _progress_bar(console, len(plan)) as advance:
            return asyncio.run(drive(stack.ingress, plan, workers * concurrency, advance))
