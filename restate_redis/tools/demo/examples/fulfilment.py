"""An order fulfilment Workflow with retention: its run handler records each step and completes.

State keys of one order: ``cart``, ``items``, ``steps`` (the steps done, in order) and
``status``. When the run commits, the workflow is completed and all its keys expire after
the retention.
"""

from __future__ import annotations

from typing import Any, Protocol

from ....store import RedisStateStore


class StateContext(Protocol):
    """What the handlers use of a session or of a restate-sdk handler's context."""

    async def get(self, name: str) -> Any: ...
    def set(self, name: str, value: Any) -> None: ...
    def clear(self, name: str) -> None: ...


SERVICE = "OrderFulfilment"
STEPS = ("reserved", "paid", "shipped")


def apply_run(ctx: StateContext, cart: str, items: dict[str, int]) -> None:
    """The run handler's state: the order, then each step as it is done."""
    ctx.set("cart", cart)
    ctx.set("items", items)
    steps: list[str] = []
    for step in STEPS:
        steps.append(step)
        ctx.set("steps", steps)
        ctx.set("status", step)


async def run(
    store: RedisStateStore, order_id: str, cart: str, items: dict[str, int], retention: float
) -> None:
    """The workflow's run handler: runs once per order id."""
    async with store.workflow(SERVICE, order_id, retention=retention) as ctx:
        apply_run(ctx, cart, items)


async def read_status(ctx: Any) -> dict[str, Any]:
    """The order's state keys, read from a shared session or handler context."""
    return {
        "cart": await ctx.get("cart"),
        "items": await ctx.get("items"),
        "steps": await ctx.get("steps"),
        "status": await ctx.get("status"),
    }


async def status(store: RedisStateStore, order_id: str) -> dict[str, Any]:
    """The order's state, read in a shared session (while it runs and until it expires)."""
    async with store.workflow(SERVICE, order_id, shared=True) as ctx:
        return {**await read_status(ctx), "workflow": ctx.workflow_status}
