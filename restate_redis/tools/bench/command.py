"""``restate-redis bench``: the adapter measured against raw redis-py and a Dapr-style layout.

One run, one server, several repetitions of every case (interleaved, so drift hits every case
alike), medians reported. Round trips and bytes per session are counted on the wire
(:mod:`restate_redis.tools.bench.meter`), not assumed. The workloads and what "raw redis-py" means
are in :mod:`restate_redis.tools.bench.workloads`.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import click
from redis.exceptions import RedisError

from ...backend.connection import connect, parse_url, redact
from ...backend.inventory import masters
from ...errors import StateError
from ...store import RedisStateStore
from ..kv import count_option
from .memory import measure_memory
from .meter import METER, CountingConnection, CountingLoop
from .workloads import CODEC_SIZES, NAMESPACE, Case, Workloads

SCHEMA = 1
COUNTED = ("round_trips", "replies", "bytes_out", "bytes_in")  # on the wire, by the meter


@dataclass
class Sample:
    """One repetition of one case."""

    ops_per_s: float
    p50_ms: float
    p99_ms: float
    # Counted on the wire, per session; None when the meter could not count (see meter.py).
    round_trips: float | None
    replies: float | None
    bytes_out: float | None
    bytes_in: float | None
    client_cpu_us: float  # this process's CPU time per session
    server_cpu_us: float  # the server's CPU time per session (INFO cpu), if it is ours alone
    # Per master (one for a single server): the sessions it served per second (objects routed
    # to it by their slot; None when the case's sessions span slots), the commands it
    # processed per second and the share of one core it used (INFO stats and cpu).
    per_master: dict[str, dict[str, float | None]] = field(default_factory=dict)


@dataclass
class Result:
    """Every repetition of one case, and their medians."""

    case: Case
    samples: list[Sample] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def median(self, name: str) -> float:
        return float(statistics.median(getattr(s, name) for s in self.samples))

    def counted(self, name: str) -> float | None:
        """The median of a counted field, None when a repetition was not counted."""
        values = [getattr(s, name) for s in self.samples]
        return None if None in values else float(statistics.median(values))

    def per_master(self) -> dict[str, dict[str, float | None]]:
        """The medians of each master's figures."""
        out: dict[str, dict[str, float | None]] = {}
        for name in self.samples[0].per_master if self.samples else {}:
            rows = [s.per_master[name] for s in self.samples]
            out[name] = {
                k: None
                if None in (vals := [r[k] for r in rows])
                else round(float(statistics.median(v for v in vals if v is not None)), 4)
                for k in rows[0]
            }
        return out

    def to_json(self) -> dict[str, Any]:
        c = self.case
        timed = ("ops_per_s", "p50_ms", "p99_ms", "client_cpu_us", "server_cpu_us")
        counted = {name: self.counted(name) for name in COUNTED}
        return {
            "id": c.id,
            "workload": c.workload,
            "system": c.system,
            "variant": c.variant,
            "concurrency": c.concurrency,
            "sessions": c.sessions,
            **{name: round(self.median(name), 4) for name in timed[:3]},
            **{name: None if v is None else round(v, 4) for name, v in counted.items()},
            **{name: round(self.median(name), 4) for name in timed[3:]},
            "per_master": self.per_master(),
            "samples": [s.__dict__ for s in self.samples],
            "problems": self.problems,
        }


def quantile(values: list[float], q: float) -> float:
    """Nearest-rank quantile ``q`` (0..1)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


@dataclass
class NodeStats:
    """What one server (a cluster's master) has counted so far."""

    cpu: float  # seconds of CPU, user + system
    commands: int  # commands processed


async def node_stats(client: Any) -> dict[str, NodeStats]:
    """Each master's CPU and commands so far, by name (``host:port``; ``server`` for the one
    server of a client that is not a cluster's)."""
    out: dict[str, NodeStats] = {}
    for node in await masters(client):
        kw = {} if node is None else {"target_nodes": node}
        cpu, stats = await client.info("cpu", **kw), await client.info("stats", **kw)
        out["server" if node is None else node.name] = NodeStats(
            float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]),
            int(stats["total_commands_processed"]),
        )
    return out


def lane_masters(case: Case, client: Any) -> list[str] | None:
    """The master each lane's sessions go to, or None when the case has no route."""
    if not case.route:
        return None
    if not hasattr(client, "get_node_from_key"):
        return ["server"] * case.concurrency
    route = case.route
    return [client.get_node_from_key(route[j % len(route)]).name for j in range(case.concurrency)]


async def measure(
    case: Case, client: Any, settle: Callable[[], Awaitable[None]] | None = None
) -> Sample:
    """Run ``case.sessions`` sessions over ``case.concurrency`` lanes.

    Besides wall-clock numbers it records CPU time per session, client and server: on a
    shared machine those are far steadier than throughput, and on a saturated box they are
    what bounds it.
    """
    latencies: list[float] = []

    async def lane(j: int) -> None:
        op, clock = case.op, time.perf_counter
        for _ in range(j, case.sessions, case.concurrency):
            started = clock()
            await op(j)
            latencies.append(clock() - started)

    lanes = lane_masters(case, client)
    nodes_before = await node_stats(client)
    METER.reset()
    cpu_before = time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(lane(j) for j in range(case.concurrency)))
    elapsed = time.perf_counter() - started
    if settle is not None:  # releases sent without waiting: counted with their sessions
        await settle()
    cpu = time.process_time() - cpu_before
    counted = (METER.round_trips, METER.replies, METER.bytes_out, METER.bytes_in)
    nodes_after = await node_stats(client)
    server = sum(nodes_after[k].cpu - b.cpu for k, b in nodes_before.items())
    n = case.sessions
    per_session = [None if METER.unavailable else c / n for c in counted]
    served = dict.fromkeys(nodes_before, 0)
    for j, name in enumerate(lanes or ()):
        served[name] = served.get(name, 0) + len(range(j, n, case.concurrency))
    per_master: dict[str, dict[str, float | None]] = {
        name: {
            "sessions_per_s": None if lanes is None else served[name] / elapsed,
            "commands_per_s": (nodes_after[name].commands - b.commands) / elapsed,
            "cpu_share": (nodes_after[name].cpu - b.cpu) / elapsed,
        }
        for name, b in nodes_before.items()
    }
    return Sample(
        ops_per_s=n / elapsed,
        p50_ms=quantile(latencies, 0.5) * 1000,
        p99_ms=quantile(latencies, 0.99) * 1000,
        round_trips=per_session[0],
        replies=per_session[1],
        bytes_out=per_session[2],
        bytes_in=per_session[3],
        client_cpu_us=cpu / n * 1e6,
        server_cpu_us=server / n * 1e6,
        per_master=per_master,
    )


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo ("" where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


async def machine(client: Any) -> dict[str, Any]:
    """Where the numbers come from."""
    info = await client.info("server")
    cpu = cpu_model()
    from redis.utils import HIREDIS_AVAILABLE

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    server = (
        "valkey" if info.get("valkey_version") or info.get("server_name") == "valkey" else "redis"
    )
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu or platform.processor(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "server": server,
        "server_version": info.get("valkey_version") or info.get("redis_version"),
        "redis_py": version("redis"),
        "hiredis": version("hiredis") if HIREDIS_AVAILABLE else None,
        "parser": "hiredis" if HIREDIS_AVAILABLE else "python",
    }


def ratios(results: dict[str, Result]) -> dict[str, float]:
    """Adapter over its comparison, from the medians of the same run (throughput ratios)."""

    def r(a: str, b: str) -> float:
        return results[a].median("ops_per_s") / results[b].median("ops_per_s")

    def cpu(case_id: str) -> float:
        return results[case_id].median("client_cpu_us") + results[case_id].median("server_cpu_us")

    out: dict[str, float] = {}
    for case_id in results:
        if case_id == "w1.adapter.history.c1":  # against the same sessions with history off
            out["history on/off eager c1"] = r(case_id, "w1.adapter.eager.c1")
            out["history on/off server CPU eager c1"] = results[case_id].median(
                "server_cpu_us"
            ) / max(1e-9, results["w1.adapter.eager.c1"].median("server_cpu_us"))
        elif case_id.startswith("w1.adapter."):
            out[f"adapter/raw {case_id[11:]}"] = r(case_id, "w2.raw." + case_id[11:])
            # The same comparison by CPU (client + server) per session, inverted so that it
            # reads like a throughput ratio: steadier than wall time on a shared machine.
            out[f"adapter/raw by CPU {case_id[11:]}"] = cpu("w2.raw." + case_id[11:]) / cpu(case_id)
        elif case_id.startswith("w3.adapter."):
            out[f"adapter/dapr {case_id[11:]}"] = r(case_id, "w3.dapr." + case_id[11:])
        elif case_id.startswith("w6.adapter."):
            out[f"adapter/raw shared {case_id[11:]}"] = r(case_id, "w6.raw." + case_id[11:])
    out["lazy/eager 1 of 1,000 x 1 KiB"] = r("w4.adapter.lazy", "w4.adapter.eager")
    out["eager cached/uncached 1 of 1,000 x 1 KiB"] = r(
        "w4.adapter.eager-cached", "w4.adapter.eager"
    )
    out["hot object, one process / sequential"] = r("w5.adapter.hot", "w5.adapter.sequential")
    out["preload/eager 1 of 1,000 x 1 KiB"] = r("w4.adapter.preload", "w4.adapter.eager")
    out["shared lazy/eager 1 of 1,000 x 1 KiB"] = r(
        "w4.adapter.shared-lazy", "w4.adapter.shared-eager"
    )
    return out


def targets(results: dict[str, Result], rat: dict[str, float]) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured value and whether it is met."""
    c = max(r.case.concurrency for r in results.values())
    rows: list[tuple[str, float | None, str, bool]] = []
    for key, want in (("eager.c1", 1.0), (f"eager.c{c}", 2.0)):
        v = rat[f"adapter/raw {key}"]
        rows.append((f"workload 1 adapter/raw throughput, {key}", v, f">= {want:g}", v >= want))
    for name, case_id, want in (
        ("round trips, eager exclusive session", "w1.adapter.eager.c1", 2),
        ("round trips, shared eager session", "w6.adapter.c1", 1),
        # sent: the open that carries the read, and the release, which is not awaited
        ("round trips, lazy read of one key (1 awaited)", "w4.adapter.lazy", 2),
        ("round trips, a session that only writes", "w1.adapter.blind.c1", 1),
    ):
        counted = results[case_id].counted("round_trips")
        rows.append((name, counted, f"= {want}", counted == want))
    v = rat["eager cached/uncached 1 of 1,000 x 1 KiB"]
    rows.append(("eager session on an unchanged 1,000 x 1 KiB, cached/uncached", v, ">= 10",
                 v >= 10))  # fmt: skip
    counted = results["w4.adapter.eager-cached"].counted("bytes_in")
    met = counted is not None and counted < 1024
    rows.append(("bytes in per cached eager session, 1,000 x 1 KiB", counted, "< 1024", met))
    v = rat["lazy/eager 1 of 1,000 x 1 KiB"]
    rows.append(("lazy/eager (uncached) one-key read, 1,000 x 1 KiB", v, ">= 20", v >= 20))
    v = rat["hot object, one process / sequential"]
    rows.append(("hot object, sessions of one process / uncontended sequential", v, ">= 0.8",
                 v >= 0.8))  # fmt: skip
    v = rat["shared lazy/eager 1 of 1,000 x 1 KiB"]
    rows.append(("the same, shared (read-only) sessions", v, ">= 20", v >= 20))
    for k in (5, 10):
        v = rat[f"adapter/dapr k{k}"]
        rows.append((f"adapter/dapr-style throughput, {k} keys", v, "> 1", v > 1))
    return [
        {"target": t, "measured": None if v is None else round(v, 3), "want": w, "met": ok}
        for t, v, w, ok in rows
    ]


def memory_targets(memory: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's memory targets: an object of one small state key against a plain hash."""
    rows = []
    for name, field_name, want in (
        ("memory per object, idle / plain hash", "idle_ratio", 1.5),
        ("memory per object, right after a commit / plain hash", "after_commit_ratio", 3.0),
    ):
        v = float(memory[field_name])
        rows.append({"target": name, "measured": round(v, 3), "want": f"<= {want:g}",
                     "met": v <= want})  # fmt: skip
    return rows


def codec_rows(
    results: dict[str, Result],
    sizes: dict[str, dict[str, int]],
    codec_cpu: dict[str, dict[str, float]],
    unavailable: str | None,
) -> dict[str, Any]:
    """Workload 7 summed up per value size: the bytes stored by each variant and the
    compression ratio (msgpack bytes over stored bytes); the client CPU per whole session of
    each variant (medians of the same run); and the CPU the codecs themselves take per
    session (one decode and one encode of the value, timed on their own: steadier than the
    difference of two session medians)."""
    if unavailable is not None:
        return {"unavailable": unavailable}
    rows: dict[str, Any] = {}
    for size_name in CODEC_SIZES:
        cpu = {
            case_id.split(".")[1]: round(r.median("client_cpu_us"), 1)
            for case_id, r in results.items()
            if case_id.startswith("w7.") and case_id.endswith(f".{size_name}")
        }
        stored = sizes[size_name]
        rows[size_name] = {
            "msgpack_bytes": stored["msgpack"],
            "stored_bytes": {v: n for v, n in stored.items() if v != "msgpack"},
            "compression_ratio": round(stored["msgpack"] / stored["zstd"], 2),
            "client_cpu_us": cpu,
            "codec_cpu_us": codec_cpu[size_name],
            "zstd_cpu_us": round(codec_cpu[size_name]["zstd"] - codec_cpu[size_name]["plain"], 1),
            "encryption_cpu_us": round(
                codec_cpu[size_name]["aes"] - codec_cpu[size_name]["plain"], 1
            ),
            "encryption_cpu_us_compressed": round(
                codec_cpu[size_name]["zstd+aes"] - codec_cpu[size_name]["zstd"], 1
            ),
        }
    return rows


def memory_rows(memory: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """The memory row's lines: what, bytes per object, ratio to the plain hash, keys per
    object by kind."""

    def kinds(counts: dict[str, float]) -> str:
        return ", ".join(f"{k} {v:g}" for k, v in counts.items())

    sized = [
        (f"{row['value_bytes'] // 1024} KiB value written twice, {when}",
         f"{row[f'{field}_bytes']:,.0f}", "-", f"{row['objects']:,} objects")
        for row in memory.get("sized", {}).values()
        for when, field in (("right after", "after_commit"), ("idle", "idle"))
    ]  # fmt: skip
    return [
        ("plain hash, same field", f"{memory['plain_hash_bytes']:,.0f}", "1.00", "1 hash"),
        ("this store, right after a commit", f"{memory['after_commit_bytes']:,.0f}",
         f"{memory['after_commit_ratio']:.2f}", kinds(memory["keys_per_object"])),
        ("this store, idle", f"{memory['idle_bytes']:,.0f}", f"{memory['idle_ratio']:.2f}",
         kinds(memory["idle_keys_per_object"])),
        *sized,
    ]  # fmt: skip


def master_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Per-master throughput, one row per case and one column per master: the sessions per
    second it served ("-" when the case's sessions span slots) and the share of a core it
    used. Empty on a single server."""
    names = report["masters"]
    if len(names) < 2:
        return names, []
    rows = []
    for c in report["cases"]:
        row = [c["id"]]
        for name in names:
            m = c["per_master"][name]
            served = "-" if m["sessions_per_s"] is None else f"{m['sessions_per_s']:,.0f}"
            row.append(f"{served} ({m['cpu_share'] * 100:.0f}%)")
        rows.append(row)
    return names, rows


def memory_markdown(memory: dict[str, Any]) -> list[str]:
    lines = [
        f"Memory per object: {memory['description']}.",
        "",
        "| object of one small state key | bytes/object | / plain hash | keys per object |",
        "| --- | ---: | ---: | --- |",
    ]
    return lines + ["| " + " | ".join(row) + " |" for row in memory_rows(memory)]


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown tables (for the README)."""
    m = report["machine"]
    lines = [
        f"Machine: {m['nproc']} cores, {m['cpu']}, {m['os']}; {m['server']} "
        f"{m['server_version']} on loopback; Python {m['python']}, redis-py {m['redis_py']} "
        f"with the {m['parser']} parser"
        + (f" (hiredis {m['hiredis']})" if m["hiredis"] else "")
        + f"; medians of {report['settings']['repetitions']} repetitions.",
        "",
        "| workload | system | variant | conc | ops/s | p50 ms | p99 ms | RT/session "
        "| bytes out | bytes in | client CPU µs | server CPU µs |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in report["cases"]:
        lines.append(
            f"| {c['workload']} | {c['system']} | {c['variant']} | {c['concurrency']} "
            f"| {c['ops_per_s']:,.0f} | {c['p50_ms']:.3f} | {c['p99_ms']:.3f} "
            f"| {_count(c['round_trips'], 'g')} | {_count(c['bytes_out'], ',.0f')} "
            f"| {_count(c['bytes_in'], ',.0f')} "
            f"| {c['client_cpu_us']:,.0f} | {c['server_cpu_us']:,.0f} |"
        )
    if report["meter_unavailable"]:
        lines += ["", f"RT/session, bytes out, bytes in: {_not_counted(report)}"]
    lines += ["", "| ratio (throughput) | value |", "| --- | ---: |"]
    lines += [f"| {k} | {v:.2f} |" for k, v in report["ratios"].items()]
    codecs = report.get("codecs", {})
    if "unavailable" in codecs:
        lines += ["", f"Workload 7 (codecs) left out: {codecs['unavailable']}"]
    elif codecs:
        lines += [
            "",
            "| value (msgpack) | zstd ratio | stored: zstd / aes / both | client CPU µs/session: "
            "plain / zstd / aes / both | codecs' CPU µs/session: zstd / aes / both |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for name, row in codecs.items():
            b, c, k = row["stored_bytes"], row["client_cpu_us"], row["codec_cpu_us"]
            lines.append(
                f"| {name[:-1]} KiB JSON-like ({row['msgpack_bytes']:,} B) "
                f"| {row['compression_ratio']:.2f} "
                f"| {b['zstd']:,} / {b['aes']:,} / {b['zstd+aes']:,} "
                f"| {c['plain']:,.0f} / {c['zstd']:,.0f} / {c['aes']:,.0f} / {c['zstd+aes']:,.0f} "
                f"| {k['zstd']:,.1f} / {k['aes']:,.1f} / {k['zstd+aes']:,.1f} |"
            )
    names, rows = master_rows(report)
    if rows:
        lines += [
            "",
            "Per master: sessions/s served (the share of one core it used).",
            "",
            "| case | " + " | ".join(names) + " |",
            "| --- |" + " ---: |" * len(names),
        ]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += ["", *memory_markdown(report["memory"])]
    lines += ["", "| target | measured | want | met |", "| --- | ---: | --- | --- |"]
    lines += [
        f"| {t['target']} | {_count(t['measured'], 'g')} | {t['want']} "
        f"| {'yes' if t['met'] else 'NO'} |"
        for t in report["targets"]
    ]
    return "\n".join(lines) + "\n"


async def run_bench(
    url: str,
    *,
    repetitions: int,
    scale: float,
    concurrency: int,
    hot_concurrency: int,
    memory_objects: int = 10_000,
    progress: Any = None,
) -> dict[str, Any]:
    """Run every case ``repetitions`` times against ``url``; the JSON report. Then the memory
    row, over ``memory_objects`` objects (:mod:`restate_redis.tools.bench.memory`)."""
    from redis.asyncio import ConnectionPool, Redis

    kind = parse_url(url).kind
    client: Any
    if kind == "cluster":
        client = connect(url)
        # RedisCluster takes no connection_class: the nodes of its slot map, made when it
        # first connects, open their connections from its connection_kwargs.
        client.connection_kwargs["connection_class"] = CountingConnection
        await client.initialize()
        if any(node.connection_class is not CountingConnection for node in client.get_nodes()):
            METER.fail("the cluster client's nodes do not open counting connections")
    elif kind == "redis":
        client = Redis(
            connection_pool=ConnectionPool.from_url(url, connection_class=CountingConnection)
        )
    else:
        raise ValueError(
            f"the bench measures one server (redis://, rediss://, unix://) or a cluster "
            f"(redis+cluster://), not a {kind} URL"
        )
    store = RedisStateStore(client, namespace=NAMESPACE, acquire_timeout=60)
    try:
        mach = await machine(client)
        work = Workloads(store, concurrency, scale)
        await work.setup()
        cases = work.cases(hot_concurrency)
        results = {c.id: Result(c) for c in cases}
        for case in cases:  # warm: scripts loaded, one connection per lane in the pool
            await measure(
                Case(**{**case.__dict__, "sessions": case.concurrency}), client, work.settle
            )
            if case.check is not None:
                await case.check(case.concurrency)
        for rep in range(repetitions):
            for case in cases:
                if progress is not None:
                    progress(rep, case)
                sample = await measure(case, client, work.settle)
                results[case.id].samples.append(sample)
                if case.check is not None and (problem := await case.check(case.sessions)):
                    results[case.id].problems.append(problem)
        sizes = await work.codec_sizes()
        codec_cpu = work.codec_cpu()
        memory = await measure_memory(store, memory_objects, concurrency)
        await work.cleanup()
        await work.aclose()
    finally:
        await client.aclose()
    rat = ratios(results)
    return {
        "schema": SCHEMA,
        "machine": mach,
        "settings": {
            "repetitions": repetitions,
            "scale": scale,
            "concurrency": concurrency,
            "hot_concurrency": hot_concurrency,
            "memory_objects": memory_objects,
            "url": redact(url),
        },
        # why round trips, replies and bytes are null (not counted), or None
        "meter_unavailable": METER.unavailable,
        # the masters measured (one, "server", for a single server), as per_master names them
        "masters": list(next(iter(results.values())).per_master()),
        "cases": [r.to_json() for r in results.values()],
        "ratios": {k: round(v, 4) for k, v in rat.items()},
        "codecs": codec_rows(results, sizes, codec_cpu, work.codecs_unavailable),
        "memory": memory,
        "targets": targets(results, rat) + memory_targets(memory),
    }


@click.command("bench")
@click.option("--url", default=None, help="Measure this Redis instead of the embedded server.")
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the report as JSON here.",
)
@click.option("--quick", is_flag=True, help="A few sessions per case, one repetition: seconds.")
@click.option(
    "--repetitions",
    type=click.IntRange(1, 100),
    default=None,
    help="Repetitions of every case [default: 5, --quick: 1].",
)
@count_option("--concurrency", 64, "Concurrent objects in the concurrent cases.", most=1024)
@count_option(
    "--hot-concurrency",
    16,
    "Concurrent sessions on the one object of the hot-key case.",
    most=1024,
)
@click.option(
    "--memory-objects",
    type=click.IntRange(1, 10_000_000),
    default=None,
    metavar="N",
    help="Objects of the memory-per-object row [default: 10,000, --quick: 1,000].",
)
@click.option(
    "--markdown",
    "md_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the tables as Markdown here.",
)
def bench_command(
    url: str | None,
    json_path: Path | None,
    quick: bool,
    repetitions: int | None,
    concurrency: int,
    hot_concurrency: int,
    memory_objects: int | None,
    md_path: Path | None,
) -> None:
    """Measure the adapter against raw redis-py and a Dapr-style layout on one server."""
    from rich.console import Console

    console = Console()
    if not console.is_terminal:  # a log file: keep each table row on one line
        console = Console(width=160)
    reps = repetitions or (1 if quick else 5)
    scale = 0.05 if quick else 1.0
    embedded = None
    if url is None:
        from ..embedded import start_for_command

        embedded = start_for_command()
        url = embedded.url
    try:
        from redis.utils import HIREDIS_AVAILABLE

        parser = "hiredis parser" if HIREDIS_AVAILABLE else "pure-Python parser (no hiredis)"
        where = "embedded Valkey" if embedded else "Redis"
        console.print(f"Benchmarking {where} at {redact(url)} with redis-py and the {parser}")

        def progress(rep: int, case: Case) -> None:
            console.print(f"  repetition {rep + 1}/{reps}: {case.id}", highlight=False, end="\r")

        try:
            # on the meter's loop, which opens the bench's connections on counting sockets
            with asyncio.Runner(loop_factory=CountingLoop) as runner:
                report = runner.run(
                    run_bench(
                        url,
                        repetitions=reps,
                        scale=scale,
                        concurrency=concurrency,
                        hot_concurrency=hot_concurrency,
                        memory_objects=memory_objects or (1000 if quick else 10_000),
                        progress=progress if console.is_terminal else None,
                    )
                )
        except (ValueError, RedisError, StateError) as exc:
            raise click.ClickException(f"{redact(url)}: {exc}") from exc
    finally:
        if embedded is not None:
            embedded.stop()
    _print(console, report)
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        console.print(f"JSON report: {json_path}")
    if md_path is not None:
        md_path.write_text(markdown(report), encoding="utf-8")
    problems = [p for c in report["cases"] for p in c["problems"]]
    if problems:
        for p in problems:
            console.print(f"[red]{p}[/]")
        sys.exit(1)


def _print(console: Any, report: dict[str, Any]) -> None:
    from rich.table import Table

    m = report["machine"]
    console.print(
        f"{m['nproc']} cores, {m['cpu']}; {m['server']} {m['server_version']}; Python "
        f"{m['python']}, redis-py {m['redis_py']}, parser {m['parser']}"
        + (f" (hiredis {m['hiredis']})" if m["hiredis"] else " (hiredis NOT installed)"),
        highlight=False,
    )
    table = Table(title=f"medians of {report['settings']['repetitions']} repetition(s)")
    cols = ("workload", "system", "variant", "conc", "ops/s", "p50 ms", "p99 ms", "RT/sess",
            "B out", "B in", "client CPU us", "server CPU us")  # fmt: skip
    for col in cols:
        table.add_column(col, justify="left" if col in cols[:3] else "right")
    for c in report["cases"]:
        table.add_row(
            c["workload"], c["system"], c["variant"], str(c["concurrency"]),
            f"{c['ops_per_s']:,.0f}", f"{c['p50_ms']:.3f}", f"{c['p99_ms']:.3f}",
            _count(c["round_trips"], "g"), _count(c["bytes_out"], ",.0f"),
            _count(c["bytes_in"], ",.0f"),
            f"{c['client_cpu_us']:,.0f}", f"{c['server_cpu_us']:,.0f}",
        )  # fmt: skip
    console.print(table)
    if report["meter_unavailable"]:
        console.print(f"[red]RT/sess, B out, B in: {_not_counted(report)}[/]", highlight=False)
    ratio = Table(title="ratios (throughput, same run)")
    ratio.add_column("ratio")
    ratio.add_column("value", justify="right")
    for k, v in report["ratios"].items():
        ratio.add_row(k, f"{v:.2f}")
    console.print(ratio)
    codecs = report.get("codecs", {})
    if "unavailable" in codecs:
        console.print(f"workload 7 (codecs) left out: {codecs['unavailable']}", highlight=False)
    elif codecs:
        table = Table(title="codecs: one eager session reading and rewriting one value")
        codec_cols = (
            "value",
            "msgpack B",
            "zstd ratio",
            "stored zstd/aes/both",
            "session CPU us plain/zstd/aes/both",
            "codecs' CPU us zstd/aes/both",
        )
        for col in codec_cols:
            table.add_column(col, justify="left" if col == "value" else "right")
        for name, row in codecs.items():
            b, c, k = row["stored_bytes"], row["client_cpu_us"], row["codec_cpu_us"]
            table.add_row(
                f"{name[:-1]} KiB JSON-like", f"{row['msgpack_bytes']:,}",
                f"{row['compression_ratio']:.2f}", f"{b['zstd']:,}/{b['aes']:,}/{b['zstd+aes']:,}",
                f"{c['plain']:,.0f}/{c['zstd']:,.0f}/{c['aes']:,.0f}/{c['zstd+aes']:,.0f}",
                f"{k['zstd']:,.1f}/{k['aes']:,.1f}/{k['zstd+aes']:,.1f}",
            )  # fmt: skip
        console.print(table)
    names, rows = master_rows(report)
    if rows:
        per = Table(title="per master: sessions/s served (share of one core used)")
        per.add_column("case")
        for name in names:
            per.add_column(name, justify="right")
        for row in rows:
            per.add_row(*row)
        console.print(per)
    memory = report["memory"]
    mem = Table(title=f"memory per object ({memory['objects']:,} objects of one small state key)")
    for col in ("object", "bytes/object", "/ plain hash", "keys per object"):
        mem.add_column(col, justify="right" if col in ("bytes/object", "/ plain hash") else "left")
    for row in memory_rows(memory):
        mem.add_row(*row)
    console.print(mem)
    console.print(memory["description"], highlight=False)
    tgt = Table(title="targets")
    for col in ("target", "measured", "want", "met"):
        tgt.add_column(col, justify="right" if col == "measured" else "left")
    for t in report["targets"]:
        tgt.add_row(
            t["target"], _count(t["measured"], "g"), t["want"], "yes" if t["met"] else "[red]NO[/]"
        )
    console.print(tgt)


def _count(value: float | None, spec: str) -> str:
    """A counted value as the tables show it: ``n/a`` when it was not counted."""
    return "n/a" if value is None else format(value, spec)


def _not_counted(report: dict[str, Any]) -> str:
    return f"not counted (n/a): {report['meter_unavailable']}"
