"""``restate-redis bench --quick`` end to end: the report's shape and the counted round trips.

Timings are not asserted (they belong to the full bench); round trips and bytes are counted
on the wire, so they are exact.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis
import redis.cluster

from restate_redis import RedisStateStore
from restate_redis.keyspace import Keyspace
from restate_redis.tools.bench.command import COUNTED, markdown, run_bench
from restate_redis.tools.bench.meter import METER, CountingConnection
from tests.support.clirun import run_cli
from tests.support.servers import Server, running_server, start_cluster

CASES = {
    # case id -> round trips per session, counted
    "w1.adapter.eager.c1": 2,  # open (lease + HGETALL, or the snapshot confirmed) and commit
    "w1.adapter.lazy.c1": 2,  # open carrying the first read, commit
    "w1.adapter.history.c1": 2,  # the same with history on: the entry rides on the commit
    "w1.adapter.blind.c1": 1,  # a session that only writes: its commit takes the lease
    "w2.raw.blind.c1": 1,  # HSET
    "w2.raw.eager.c1": 2,  # HGETALL, HSET
    "w2.raw.lazy.c1": 2,  # HGET, HSET
    "w3.adapter.k1": 2,
    "w3.adapter.k5": 2,
    "w3.adapter.k10": 2,
    "w3.dapr.k1": 2,  # one HGETALL and one compare-and-set per key
    "w3.dapr.k5": 10,
    "w3.dapr.k10": 20,
    "w4.adapter.lazy": 2,  # open carrying the read, release (not awaited)
    "w4.adapter.preload": 2,
    "w4.adapter.eager": 2,
    "w4.adapter.eager-cached": 2,  # open (the snapshot confirmed: no state), release
    "w4.adapter.shared-lazy": 1,  # HGET: a shared lazy session opens without a round trip
    "w4.adapter.shared-eager": 1,
    "w6.adapter.c1": 1,  # a shared eager session: open only
    "w6.raw.c1": 1,
    "w7.plain.1k": 2,  # workload 7: an eager session reading and rewriting one value
    "w7.zstd+aes.100k": 2,
}


def test_quick_bench_reports_exact_round_trips(server: Server, tmp_path: Path) -> None:
    out_json, out_md = tmp_path / "bench.json", tmp_path / "bench.md"
    done = run_cli(
        "bench", "--quick", "--url", server.url, "--concurrency", "8", "--hot-concurrency", "4",
        "--json", str(out_json), "--markdown", str(out_md), "--memory-objects", "300",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "hiredis parser" in done.stdout

    report = json.loads(out_json.read_text())
    assert report["schema"] == 1
    machine = report["machine"]
    assert machine["parser"] == "hiredis" and machine["hiredis"]
    assert machine["nproc"] >= 1 and machine["server_version"] and machine["redis_py"]
    assert machine["server"] == ("valkey" if server.flavour == "valkey" else "redis")

    cases = {c["id"]: c for c in report["cases"]}
    for case_id, round_trips in CASES.items():
        case = cases[case_id]
        assert case["round_trips"] == round_trips, (case_id, case)
        assert case["replies"] == round_trips, (case_id, case)
        assert case["ops_per_s"] > 0 and case["p99_ms"] >= case["p50_ms"] > 0
        assert case["bytes_out"] > 0 and case["bytes_in"] > 0
        assert case["client_cpu_us"] > 0 and case["server_cpu_us"] >= 0
        assert len(case["samples"]) == 1 and case["problems"] == []
    # The same sessions on 8 objects at once cost the same round trips.
    assert cases["w1.adapter.eager.c8"]["round_trips"] == 2
    assert cases["w6.adapter.c8"]["round_trips"] == 1
    # The eager read of one key moves the whole 1,000 x 1 KiB state; lazy and preload do not.
    assert cases["w4.adapter.eager"]["bytes_in"] > 1000 * 1024
    assert cases["w4.adapter.eager-cached"]["bytes_in"] < 1024  # the snapshot was current
    assert cases["w4.adapter.lazy"]["bytes_in"] < 4096
    assert cases["w4.adapter.preload"]["bytes_in"] < 4096
    assert cases["w4.adapter.shared-eager"]["bytes_in"] > 1000 * 1024
    assert cases["w4.adapter.shared-lazy"]["bytes_in"] < 2048
    # The hot key: every increment landed.
    assert cases["w5.adapter.hot"]["concurrency"] == 4 and cases["w5.adapter.hot"]["problems"] == []

    targets = {t["target"]: t for t in report["targets"]}
    for name in (
        "round trips, eager exclusive session",
        "round trips, shared eager session",
        "round trips, lazy read of one key (1 awaited)",
        "round trips, a session that only writes",
        "bytes in per cached eager session, 1,000 x 1 KiB",
    ):
        assert targets[name]["met"] is True, targets[name]
    assert {
        "adapter/raw eager.c1",
        "adapter/raw by CPU eager.c1",
        "adapter/dapr k5",
        "adapter/dapr k10",
        "lazy/eager 1 of 1,000 x 1 KiB",
        "eager cached/uncached 1 of 1,000 x 1 KiB",
        "hot object, one process / sequential",
        "shared lazy/eager 1 of 1,000 x 1 KiB",
    } <= set(report["ratios"])
    # Workload 7, the codecs: one eager session each, counted; compression shrinks what a
    # session moves, and the ratio and CPU rows are there.
    for size in ("1k", "100k"):
        for variant in ("plain", "zstd", "aes", "zstd+aes"):
            case = cases[f"w7.{variant}.{size}"]
            assert case["round_trips"] == 2 and case["problems"] == [], case
    plain, zipped = cases["w7.plain.100k"], cases["w7.zstd.100k"]
    assert zipped["bytes_out"] * 2 < plain["bytes_out"]
    assert zipped["bytes_in"] * 2 < plain["bytes_in"]
    codecs = report["codecs"]
    for size, msgpack_bytes in (("1k", 1024), ("100k", 100 * 1024)):
        row = codecs[size]
        assert msgpack_bytes <= row["msgpack_bytes"] < 1.1 * msgpack_bytes
        assert row["compression_ratio"] > 1.5, row
        stored = row["stored_bytes"]
        assert stored["aes"] == row["msgpack_bytes"] + 2 + 1 + len("bench") + 12 + 16
        assert stored["zstd+aes"] == stored["zstd"] + 2 + 1 + len("bench") + 12 + 16
        assert set(row["client_cpu_us"]) == {"plain", "zstd", "aes", "zstd+aes"}
        assert {"zstd_cpu_us", "encryption_cpu_us", "encryption_cpu_us_compressed"} <= set(row)
        codec_cpu = row["codec_cpu_us"]
        assert set(codec_cpu) == {"plain", "zstd", "aes", "zstd+aes"}
        assert codec_cpu["aes"] > codec_cpu["plain"] >= 0  # encrypting costs something
    # The memory row: objects written as the Restate integration writes them, their keys
    # found by kind; the transient ones (an expiry of their own) gone once idle.
    memory = report["memory"]
    assert memory["objects"] == 300 and report["settings"]["memory_objects"] == 300
    assert memory["keys_per_object"]["state"] == 1.0, memory
    assert memory["keys_per_object"]["commits"] == 1.0, memory  # a commit id was recorded
    assert memory["transient_kinds"] and "state" not in memory["transient_kinds"], memory
    assert not set(memory["transient_kinds"]) & set(memory["idle_keys_per_object"]), memory
    assert memory["idle_keys_per_object"] == {"state": 1.0}, memory  # one hash when idle
    # (a few hundred objects are too few for the per-object bytes to order reliably: the
    # allocator's pages blur them; MEMORY USAGE of one key does not)
    usage = memory["bytes_per_key"]
    assert memory["plain_hash_bytes"] > 0 and 0 < usage["state"] < 3 * memory["plain_hash_bytes"]
    assert abs(memory["idle_ratio"] - memory["idle_bytes"] / memory["plain_hash_bytes"]) < 0.01
    assert {"memory per object, idle / plain hash",
            "memory per object, right after a commit / plain hash"} <= set(targets)  # fmt: skip
    sized = memory["sized"]
    assert [(r["value_bytes"], r["objects"]) for r in sized.values()] == [(1024, 30), (102400, 10)]
    # written twice: the state and the recorded prior value each hold 100 KiB
    assert sized["100k"]["idle_bytes"] > 2 * 102400, sized
    md = out_md.read_text()
    assert "| this store, idle |" in md and "UNLINK" in md
    assert "| 100 KiB value written twice, idle |" in md
    assert "| workload | system |" in md and "hiredis" in md
    assert "| 100 KiB JSON-like" in md and "zstd ratio" in md

    # It cleaned up after itself: the server may be the user's.
    with redis.Redis.from_url(server.url) as r:
        assert list(r.scan_iter(match="restate-bench*")) == []


def test_bench_rejects_a_bad_url() -> None:
    done = run_cli("bench", "--quick", "--url", "not-a-url", timeout=60)
    assert done.returncode != 0
    assert "not-a-url" in done.stdout + done.stderr


async def test_meter_counts_the_bytes_the_server_counted() -> None:
    """The meter's bytes out and in are, to the byte, what Valkey counted for those clients
    (CLIENT LIST tot-net-in, tot-net-out): the store's link, pooled commands and a pipeline."""
    with running_server("valkey") as srv:
        pool = aioredis.ConnectionPool.from_url(srv.url, connection_class=CountingConnection)
        client = aioredis.Redis(connection_pool=pool)
        store = RedisStateStore(client)
        try:
            METER.reset()
            for i in range(5):
                async with store.object("Cart", f"c{i}") as ctx:
                    ctx.set("items", {"apple": i} | {f"k{j}": "x" * 300 for j in range(i)})
            await asyncio.gather(*(client.hgetall(f"h{i}") for i in range(8)))
            async with client.pipeline(transaction=True) as pipe:
                await pipe.set("a", "b" * 5000).get("a").execute()
            counted = METER.bytes_out, METER.bytes_in
            with redis.Redis(port=srv.port) as observer:
                me = observer.client_id()
                clients = [c for c in observer.client_list() if int(c["id"]) != me]
            server_in = sum(int(c["tot-net-in"]) for c in clients)
            server_out = sum(int(c["tot-net-out"]) for c in clients)
        finally:
            await store.aclose()
            await client.aclose()
    assert len(clients) >= 2  # the link and pooled connections
    assert METER.unavailable is None
    assert counted == (server_in, server_out)
    assert METER.round_trips > 0 and METER.replies > 0


# One flavour: what is proven is the meter on a foreign event loop, not the server.
@pytest.mark.parametrize("server", ["valkey"], indirect=True)
def test_meter_off_its_event_loop_reports_the_columns_as_not_counted(server: Server) -> None:
    """On another event loop than the meter's, the bench's sockets are not counted: the report
    says why and shows n/a, never a wrong count."""
    saved, METER.unavailable = METER.unavailable, None
    try:
        report = asyncio.run(  # asyncio's own loop
            run_bench(server.url, repetitions=1, scale=0.05, concurrency=2, hot_concurrency=2)
        )
    finally:
        METER.unavailable = saved
    why = report["meter_unavailable"]
    assert "not opened by the meter's CountingLoop" in why and "SelectorEventLoop" in why, why
    for case in report["cases"]:
        assert [case[name] for name in COUNTED] == [None] * len(COUNTED), case
        assert case["ops_per_s"] > 0
    targets = {t["target"]: t for t in report["targets"]}
    lazy = targets["round trips, lazy read of one key (1 awaited)"]
    assert lazy["measured"] is None and lazy["met"] is False
    md = markdown(report)
    assert f"RT/session, bytes out, bytes in: not counted (n/a): {why}" in md
    assert "| round trips, lazy read of one key (1 awaited) | n/a | = 2 | NO |" in md


def test_bench_on_a_cluster_reports_each_masters_throughput(tmp_path: Path) -> None:
    """``bench --url redis+cluster://...``: every case counted on the wire as on one server,
    and each master's share: the sessions of the objects whose slots it owns, its commands
    and its CPU."""
    cluster = start_cluster(3, flavour="valkey")
    try:
        out_json, out_md = tmp_path / "bench.json", tmp_path / "bench.md"
        done = run_cli(
            "bench", "--quick", "--url", cluster.url, "--concurrency", "4", "--hot-concurrency",
            "2", "--memory-objects", "300", "--json", str(out_json), "--markdown", str(out_md),
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        report = json.loads(out_json.read_text())
        with redis.cluster.RedisCluster("127.0.0.1", cluster.masters[0].port) as rc:
            owner = {  # case id -> the masters owning its objects' slots
                c["id"]: {rc.get_node_from_key(key).name for key in _route(c["id"])}
                for c in report["cases"]
                if _route(c["id"])
            }
            assert list(rc.scan_iter(match="restate-bench*")) == []  # cleaned up, every master
    finally:
        cluster.stop()
    names = {f"127.0.0.1:{s.port}" for s in cluster.masters}
    assert set(report["masters"]) == names and report["meter_unavailable"] is None
    cases = {c["id"]: c for c in report["cases"]}
    assert cases["w1.adapter.eager.c1"]["round_trips"] == 2
    assert cases["w1.adapter.blind.c1"]["round_trips"] == 1
    assert cases["w6.adapter.c1"]["round_trips"] == 1
    for case_id, owners in owner.items():
        per = cases[case_id]["per_master"]
        assert set(per) == names
        served = {name for name, m in per.items() if m["sessions_per_s"]}
        assert served == owners, (case_id, per)
        total = sum(m["sessions_per_s"] for m in per.values())
        assert abs(total - cases[case_id]["ops_per_s"]) < 0.01 * total, (case_id, per)
        for name in owners:
            assert per[name]["commands_per_s"] > per[name]["sessions_per_s"] > 0
    # the four objects of the concurrent cases are on more than one master
    assert len(owner["w1.adapter.eager.c4"]) >= 2
    # a Dapr-style session spans slots: its sessions are not given per master
    assert all(m["sessions_per_s"] is None for m in cases["w3.dapr.k5"]["per_master"].values())
    assert "Per master: sessions/s served" in out_md.read_text()
    assert "per master" in done.stdout


def _route(case_id: str) -> list[str]:
    """The state keys a case's lanes work on (as workloads.py builds them), for the cases
    checked by route."""
    ks = Keyspace("restate-bench")
    if case_id.startswith(("w1.", "w2.")):
        return [ks.object_keys("W1", f"obj-{j}").state for j in range(4 if "c4" in case_id else 1)]
    if case_id.startswith("w6."):
        return [ks.object_keys("W6", f"obj-{j}").state for j in range(4 if "c4" in case_id else 1)]
    if case_id.startswith("w4."):
        return [ks.object_keys("W4", "big").state]
    return []
