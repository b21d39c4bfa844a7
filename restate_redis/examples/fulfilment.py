"""An order fulfilment Workflow with retention: its run handler records each step and completes.

State keys of one order: ``cart``, ``items``, ``steps`` (the steps done, in order) and
``status``. When the run commits, the workflow is completed and all its keys expire after
the retention.
"""

from __future__ import annotations

from typing import Any

from ..store import RedisStateStore

SERVICE = "OrderFulfilment"
STEPS = ("reserved", "paid", "shipped")


async def run(
    store: RedisStateStore, order_id: str, cart: str, items: dict[str, int], retention: float
) -> None:
    """The workflow's run handler: runs once per order id."""
    async with store.workflow(SERVICE, order_id, retention=retention) as ctx:
        ctx.set("cart", cart)
        ctx.set("items", items)
        steps: list[str] = []
        for step in STEPS:
            steps.append(step)
            ctx.set("steps", steps)
            ctx.set("status", step)


async def status(store: RedisStateStore, order_id: str) -> dict[str, Any]:
    """The order's state, read in a shared session (while it runs and until it expires)."""
    async with store.workflow(SERVICE, order_id, shared=True) as ctx:
        return {
            "cart": await ctx.get("cart"),
            "items": await ctx.get("items"),
            "steps": await ctx.get("steps"),
            "status": await ctx.get("status"),
            "workflow": ctx.workflow_status,
        }
