"""The benchmark's workloads: the adapter, raw redis-py and a Dapr-style layout, side by side.

Every case is a coroutine doing one session (one invocation's state work), run ``sessions``
times over ``concurrency`` lanes; lane ``j`` of a multi-object case works on its own object.

What "raw redis-py" means here, precisely: the fewest commands a hand-written handler needs to
do the same reads and writes on the same hash, and nothing else: no lease (so no mutual
exclusion), no atomic multi-key commit, no version, no commit id. For an eager read that is
``HGETALL`` of the state hash then ``HSET`` of the written field (2 round trips); for a lazy
read ``HGET`` then ``HSET`` (2 round trips); for a shared read ``HGETALL`` (1). It is the floor
the adapter pays on top of, not a correct alternative. Both sides decode the value read and
encode the value written with msgpack, so the ratio measures the state protocol, not the serde.

Workload 7 measures the value codecs: one eager session reading and rewriting one JSON-like
value (order records: ids, names, prices, dates, tags) of 1 KiB and of 100 KiB as msgpack,
through no codec, zstd compression, AES-256-GCM encryption, and both. Its numbers are the
client CPU per session (what the codecs cost) and the bytes each session moves; the stored
sizes give the compression ratio (:meth:`Workloads.codec_sizes`).
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from ...codecs import Compression, Encryption
from ...history import History
from ...store import RedisStateStore
from .dapr import DaprStyleState

NAMESPACE = "restate-bench"  # every key the bench writes starts with this or DAPR_APP
DAPR_APP = "restate-bench-dapr"

SMALL_KEYS = 10  # workload 1, 3, 6: an object of 10 state keys of 100 bytes
SMALL_VALUE = msgpack.packb(b"v" * 98)  # 100 bytes encoded
BIG_KEYS = 1000  # workload 4: 1,000 state keys of 1 KiB
BIG_VALUE = msgpack.packb(b"b" * 1021)  # 1,024 bytes encoded
DAPR_KEYS = (1, 5, 10)
CODEC_SIZES = {"1k": 1024, "100k": 100 * 1024}  # workload 7: the JSON-like value, as msgpack
CODEC_VARIANTS = ("plain", "zstd", "aes", "zstd+aes")
_WORDS = (
    "tea", "green", "black", "oolong", "mug", "cup", "pot", "kettle", "filter", "bag", "loose",
    "leaf", "jasmine", "mint", "lemon", "ginger", "honey", "gift", "box", "sample", "large",
    "small", "red", "blue", "white", "stone", "glass", "steel",
)  # fmt: skip


def json_like(size: int) -> dict[str, Any]:
    """A JSON-like document of ``size`` bytes or a little more as msgpack (so that
    ``Compression()``'s 1 KiB threshold takes the 1 KiB one): an order with its customer and
    items, deterministic (a seeded generator) so that every run compresses alike."""
    rnd = random.Random(size)
    items: list[dict[str, Any]] = []
    doc: dict[str, Any] = {
        "id": f"order-{rnd.randrange(10**8):08d}",
        "customer": {"id": rnd.randrange(10**6), "name": "Alice Example", "tier": "gold"},
        "status": "open",
        "items": items,
    }
    while True:
        item = {
            "sku": f"SKU-{rnd.randrange(10**6):06d}",
            "name": f"{rnd.choice(_WORDS)} {rnd.choice(_WORDS)}",
            "qty": rnd.randrange(1, 10),
            "price": round(rnd.uniform(1, 200), 2),
            "added": f"2026-11-{rnd.randrange(1, 29):02d}T{rnd.randrange(24):02d}:"
            f"{rnd.randrange(60):02d}:00Z",
            "tags": rnd.sample(_WORDS, 2),
        }
        items.append(item)
        if len(msgpack.packb(doc)) >= size:
            return doc


Op = Callable[[int], Awaitable[None]]


@dataclass
class Case:
    """One measured line of the table."""

    id: str
    workload: str
    system: str  # adapter | raw | dapr
    variant: str
    concurrency: int
    sessions: int
    op: Op
    check: Callable[[int], Awaitable[str | None]] | None = None  # after a run of n sessions
    # A Redis key of the object lane j works on, route[j % len(route)]: on a cluster, the
    # master that serves the lane's sessions. Empty when a session spans several slots.
    route: Sequence[str] = ()


def small_names() -> list[str]:
    return [f"k{i}" for i in range(SMALL_KEYS)]


class Workloads:
    """Builds the state the cases need, and the cases themselves."""

    def __init__(self, store: RedisStateStore, concurrency: int, scale: float) -> None:
        self.store = store
        self.client = store.client
        # The same store without its snapshot cache: every eager open reads the state.
        self.uncached = RedisStateStore(
            store.client, namespace=NAMESPACE, acquire_timeout=60, snapshot_cache_bytes=0
        )
        self.concurrency = concurrency
        self.scale = scale
        self.objects = [f"obj-{j}" for j in range(concurrency)]
        self.codec_stores: dict[str, RedisStateStore] = {}
        self.codecs_unavailable: str | None = None
        # The same store with history on: what one entry per commit costs (w1 history).
        self.with_history = RedisStateStore(
            store.client, namespace=NAMESPACE, acquire_timeout=60, history=History()
        )

    def n(self, sessions: int) -> int:
        """A session count scaled for --quick, at least one per lane."""
        return max(self.concurrency, int(sessions * self.scale))

    def state_key(self, service: str, key: str) -> str:
        return self.store.keyspace.object_keys(service, key).state

    async def setup(self) -> None:
        await self.cleanup()
        for svc in ("W1", "W3", "W6"):
            for obj in self.objects:
                async with self.store.object(svc, obj) as ctx:
                    for name in small_names():
                        ctx.set(name, b"v" * 98)
        async with self.store.object("W4", "big") as ctx:
            for i in range(BIG_KEYS):
                ctx.set(f"k{i:04d}", b"b" * 1021)
        for key in ("hot", "calm"):
            async with self.store.object("W5", key) as ctx:
                ctx.set("n", 0)
        self.dapr = DaprStyleState(self.client, DAPR_APP, "W3", "obj-0")
        for name in small_names():
            await self.dapr.set(name, SMALL_VALUE, "")
        await self.setup_codecs()

    async def setup_codecs(self) -> None:
        """Workload 7's stores (one per codec variant, on the same client) and values; left
        out, with the reason, when the codecs' packages are not installed."""
        try:
            key = Encryption.generate_key()
            codecs: dict[str, list[Compression | Encryption]] = {
                "plain": [],
                "zstd": [Compression()],
                "aes": [Encryption({"bench": key}, "bench")],
                "zstd+aes": [Compression(), Encryption({"bench": key}, "bench")],
            }
        except ImportError as exc:
            self.codecs_unavailable = str(exc)
            return
        for variant in CODEC_VARIANTS:
            # without the snapshot cache: each session reads the value, as a worker does when
            # another one changed it
            self.codec_stores[variant] = RedisStateStore(
                self.client,
                namespace=NAMESPACE,
                acquire_timeout=60,
                codecs=codecs[variant],
                snapshot_cache_bytes=0,
            )
            for size_name, size in CODEC_SIZES.items():
                async with self.codec_stores[variant].object(f"W7-{variant}", size_name) as ctx:
                    ctx.set("doc", json_like(size))

    def codec_cpu(self, repetitions: int = 5) -> dict[str, dict[str, float]]:
        """Per value size and codec variant: the CPU microseconds the codecs take for one
        session's value, decoded once (the read) and encoded once (the write), measured on
        its own (the median of ``repetitions`` timed loops): what the codecs add to a
        session, without the noise of the session's other work."""
        out: dict[str, dict[str, float]] = {}
        for size_name, size in CODEC_SIZES.items():
            plain = msgpack.packb(json_like(size))
            loops = max(5, 200_000 // len(plain))
            out[size_name] = {}
            for variant, store in self.codec_stores.items():
                codec = store.codec
                stored = codec.encode(plain, "W7", size_name, "doc")
                samples = []
                for _ in range(repetitions):
                    started = time.process_time()
                    for _ in range(loops):
                        codec.decode(stored, "W7", size_name, "doc")
                        codec.encode(plain, "W7", size_name, "doc")
                    samples.append((time.process_time() - started) / loops * 1e6)
                out[size_name][variant] = round(statistics.median(samples), 1)
        return out

    async def codec_sizes(self) -> dict[str, dict[str, int]]:
        """Per value size: the msgpack bytes and the bytes stored by each codec variant."""
        out: dict[str, dict[str, int]] = {}
        for size_name, size in CODEC_SIZES.items():
            sizes = {"msgpack": len(msgpack.packb(json_like(size)))}
            for variant in self.codec_stores:
                state = self.state_key(f"W7-{variant}", size_name)
                sizes[variant] = int(await self.client.hstrlen(state, "doc"))
            out[size_name] = sizes
        return out

    async def settle(self) -> None:
        """Wait for the releases the sessions sent without waiting (counted with them)."""
        for store in (self.store, self.uncached, self.with_history, *self.codec_stores.values()):
            await store.backend.settle()

    async def aclose(self) -> None:
        for store in (self.store, self.uncached, self.with_history, *self.codec_stores.values()):
            await store.aclose()

    async def cleanup(self) -> None:
        """Delete every key the bench wrote (only those: the server may be the user's)."""
        for prefix in (NAMESPACE, DAPR_APP):
            batch: list[bytes] = []
            async for key in self.client.scan_iter(match=f"{prefix}*", count=1000):
                batch.append(key)
                if len(batch) >= 500:
                    await self.client.unlink(*batch)
                    batch = []
            if batch:
                await self.client.unlink(*batch)

    # -- workload 1 and 2: one read and one write, adapter versus raw redis-py --------------

    def adapter_rw(self, lazy: bool, history: bool = False) -> Op:
        store, objects = self.with_history if history else self.store, self.objects

        async def op(j: int) -> None:
            async with store.object("W1", objects[j], state_preload=not lazy) as ctx:
                ctx.set("k7", await ctx.get("k3"))

        return op

    def adapter_blind(self) -> Op:
        """A session that only writes: it never opens, its commit takes the lease."""
        store, objects = self.store, self.objects

        async def op(j: int) -> None:
            async with store.object("W1", objects[j], state_preload=False) as ctx:
                ctx.set("k7", b"v" * 98)

        return op

    def raw_blind(self) -> Op:
        client = self.client
        keys = [self.state_key("W1", obj) for obj in self.objects]

        async def op(j: int) -> None:
            await client.hset(keys[j], "k7", SMALL_VALUE)

        return op

    def raw_rw(self, lazy: bool) -> Op:
        client = self.client
        keys = [self.state_key("W1", obj) for obj in self.objects]

        async def op(j: int) -> None:
            if lazy:
                value = msgpack.unpackb(await client.hget(keys[j], "k3"))
            else:
                value = msgpack.unpackb((await client.hgetall(keys[j]))[b"k3"])
            await client.hset(keys[j], "k7", msgpack.packb(value))

        return op

    # -- workload 3: read and write k keys, adapter versus the Dapr-style layout -------------

    def adapter_k(self, k: int) -> Op:
        store, names = self.store, small_names()[:k]

        async def op(j: int) -> None:
            async with store.object("W3", "obj-0") as ctx:
                for name in names:
                    ctx.set(name, await ctx.get(name))

        return op

    def dapr_k(self, k: int) -> Op:
        dapr, names = self.dapr, small_names()[:k]

        async def op(j: int) -> None:
            read = [await dapr.get(name) for name in names]
            for name, (data, etag) in zip(names, read, strict=True):
                await dapr.set(name, msgpack.packb(msgpack.unpackb(data or b"\xc0")), etag)

        return op

    # -- workload 4: large state, a handler that reads one key -------------------------------

    def big_read(self, mode: str, shared: bool = False, cached: bool = False) -> Op:
        """An exclusive session, or a shared one (a read-only handler), reading one key;
        ``cached``: on the store whose snapshot cache holds the state."""
        store = self.store if cached else self.uncached
        preload: Any = {"lazy": False, "eager": True, "preload": ["k0500"]}[mode]

        async def op(j: int) -> None:
            async with store.object("W4", "big", shared=shared, state_preload=preload) as ctx:
                await ctx.get("k0500")

        return op

    # -- workload 5: hot key, every lane on one object ---------------------------------------

    def hot(self, key: str = "hot") -> tuple[Op, Callable[[int], Awaitable[str | None]]]:
        store = self.store
        before = [0]

        async def op(j: int) -> None:
            async with store.object("W5", key) as ctx:
                ctx.set("n", (await ctx.get("n")) + 1)

        async def check(n: int) -> str | None:
            async with store.object("W5", key, shared=True) as ctx:
                now = int(await ctx.get("n"))
            lost = before[0] + n - now
            before[0] = now
            return None if lost == 0 else f"hot key: {lost} lost updates"

        return op, check

    # -- workload 6: shared read-only sessions -----------------------------------------------

    def adapter_shared(self) -> Op:
        store, objects = self.store, self.objects

        async def op(j: int) -> None:
            async with store.object("W6", objects[j], shared=True) as ctx:
                await ctx.get("k3")
                await ctx.get("k7")

        return op

    def raw_shared(self) -> Op:
        client = self.client
        keys = [self.state_key("W6", obj) for obj in self.objects]

        async def op(j: int) -> None:
            fields = await client.hgetall(keys[j])
            msgpack.unpackb(fields[b"k3"])
            msgpack.unpackb(fields[b"k7"])

        return op

    # -- workload 7: the value codecs -----------------------------------------------------------

    def codec_rw(self, variant: str, size_name: str) -> Op:
        """One eager session: read the document, change one field, write it back."""
        store, service = self.codec_stores[variant], f"W7-{variant}"

        async def op(j: int) -> None:
            async with store.object(service, size_name) as ctx:
                doc = await ctx.get("doc")
                doc["status"] = "open" if doc["status"] != "open" else "paid"
                ctx.set("doc", doc)

        return op

    # -- the list ------------------------------------------------------------------------------

    def cases(self, hot_concurrency: int) -> list[Case]:
        c = self.concurrency
        n_seq, n_conc = self.n(1000), self.n(2000)
        out: list[Case] = []

        def objects_of(service: str) -> list[str]:
            return [self.state_key(service, obj) for obj in self.objects]

        def one(service: str, key: str) -> list[str]:
            return [self.state_key(service, key)]

        w1 = "1/2 read+write, 10 x 100 B"
        for lazy in (False, True):
            mode = "lazy" if lazy else "eager"
            for conc, n in ((1, n_seq), (c, n_conc)):
                out.append(
                    Case(f"w1.adapter.{mode}.c{conc}", w1, "adapter", mode, conc, n,
                         self.adapter_rw(lazy), route=objects_of("W1"))
                )  # fmt: skip
                out.append(
                    Case(
                        f"w2.raw.{mode}.c{conc}",
                        w1,
                        "raw",
                        mode,
                        conc,
                        n,
                        self.raw_rw(lazy),
                        route=objects_of("W1"),
                    )
                )
        out.append(Case("w1.adapter.history.c1", w1, "adapter", "eager, history on", 1, n_seq,
                        self.adapter_rw(False, history=True), route=objects_of("W1")))  # fmt: skip
        for conc, n in ((1, n_seq), (c, n_conc)):
            out.append(Case(f"w1.adapter.blind.c{conc}", "1/2 write only", "adapter", "blind",
                            conc, n, self.adapter_blind(), route=objects_of("W1")))  # fmt: skip
            out.append(Case(f"w2.raw.blind.c{conc}", "1/2 write only", "raw", "blind", conc, n,
                            self.raw_blind(), route=objects_of("W1")))  # fmt: skip
        w3 = "3 read+write k keys"
        for k in DAPR_KEYS:
            n = self.n(600 // k + 100)
            out.append(
                Case(
                    f"w3.adapter.k{k}",
                    w3,
                    "adapter",
                    f"k={k}",
                    1,
                    n,
                    self.adapter_k(k),
                    route=one("W3", "obj-0"),
                )
            )
            out.append(Case(f"w3.dapr.k{k}", w3, "dapr", f"k={k}", 1, n, self.dapr_k(k)))
        w4 = "4 read 1 of 1,000 x 1 KiB"
        for mode, n in (("lazy", 500), ("preload", 500), ("eager", 60)):
            out.append(Case(f"w4.adapter.{mode}", w4, "adapter", mode, 1, self.n(n),
                            self.big_read(mode), route=one("W4", "big")))  # fmt: skip
        out.append(Case("w4.adapter.eager-cached", w4, "adapter", "eager, cached", 1, self.n(500),
                        self.big_read("eager", cached=True), route=one("W4", "big")))  # fmt: skip
        for mode, n in (("lazy", 1000), ("eager", 60)):
            out.append(Case(f"w4.adapter.shared-{mode}", w4, "adapter", f"shared {mode}", 1,
                            self.n(n), self.big_read(mode, shared=True),
                            route=one("W4", "big")))  # fmt: skip
        op, check = self.hot()
        hc = min(hot_concurrency, c) if self.scale < 1 else hot_concurrency
        out.append(
            Case(
                "w5.adapter.hot",
                "5 hot key",
                "adapter",
                "eager",
                hc,
                self.n(800),
                op,
                check,
                route=one("W5", "hot"),
            )
        )
        op, check = self.hot("calm")  # the same sessions one at a time: uncontended
        out.append(Case("w5.adapter.sequential", "5 hot key", "adapter", "eager", 1,
                        self.n(800), op, check, route=one("W5", "calm")))  # fmt: skip
        w6 = "6 shared read"
        for conc, n in ((1, n_seq), (c, n_conc)):
            out.append(Case(f"w6.adapter.c{conc}", w6, "adapter", "shared", conc, n,
                            self.adapter_shared(), route=objects_of("W6")))  # fmt: skip
            out.append(
                Case(
                    f"w6.raw.c{conc}",
                    w6,
                    "raw",
                    "shared",
                    conc,
                    n,
                    self.raw_shared(),
                    route=objects_of("W6"),
                )
            )
        for size_name, n in (("1k", 600), ("100k", 120)):
            w7 = f"7 codecs, {size_name[:-1]} KiB JSON-like"
            for variant in self.codec_stores:
                out.append(Case(f"w7.{variant}.{size_name}", w7, "adapter", variant, 1, self.n(n),
                                self.codec_rw(variant, size_name),
                                route=one(f"W7-{variant}", size_name)))  # fmt: skip
        return out
