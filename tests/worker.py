"""Worker processes for the multi-process tests: ``python -m tests.worker MODE URL ...``."""

from __future__ import annotations

import asyncio
import random
import sys

from restate_redis import RedisStateStore


async def increment(url: str, objects: int, count: int, seed: int) -> None:
    """``count`` exclusive read-modify-write increments spread over ``objects`` counters."""
    rng = random.Random(seed)
    async with RedisStateStore.from_url(url, lease_ttl=5, acquire_timeout=60) as store:
        for _ in range(count):
            key = f"c{rng.randrange(objects)}"
            async with store.object("Counter", key, state_preload=rng.random() < 0.5) as ctx:
                n = await ctx.get("n", type_hint=int) or 0
                ctx.set("n", n + 1)
                ctx.set("log", [*(await ctx.get("log") or [])[-9:], seed])


async def big_commits(url: str, fields: int, size: int) -> None:
    """Commit generation after generation: every field of a generation holds the same value."""
    async with RedisStateStore.from_url(url) as store:
        gen = 0
        while True:
            gen += 1
            async with store.object("Atomic", "obj") as ctx:
                ctx.clear_all()
                for i in range(fields):
                    ctx.set(f"f{i}", f"{gen}:".encode() + b"x" * size)
            print(gen, flush=True)


if __name__ == "__main__":
    mode, url, *rest = sys.argv[1:]
    if mode == "increment":
        asyncio.run(increment(url, int(rest[0]), int(rest[1]), int(rest[2])))
    elif mode == "big-commits":
        asyncio.run(big_commits(url, int(rest[0]), int(rest[1])))
    else:
        raise SystemExit(f"unknown mode {mode}")
