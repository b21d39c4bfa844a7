"""The demo's services as restate-sdk handlers, for ``restate-redis demo --restate``.

``hypercorn restate_redis.tools.demo.examples.sdk:app`` serves the ``Cart`` Virtual Object and the
``OrderFulfilment`` Workflow of :mod:`~restate_redis.tools.demo.examples.cart` and
:mod:`~restate_redis.tools.demo.examples.fulfilment` to a Restate server; ``@store.restate_state()``
keeps their state in Redis, in the same keys as the direct version.

Environment: ``RESTATE_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``) and
``RESTATE_REDIS_DEMO_RETENTION`` (seconds a completed order's state is kept, default 3600).
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import restate
from restate.context import (
    ObjectContext,
    ObjectSharedContext,
    WorkflowContext,
    WorkflowSharedContext,
)

from ....store import RedisStateStore
from . import cart, fulfilment

store = RedisStateStore.from_url(os.environ.get("RESTATE_REDIS_URL", "redis://127.0.0.1:6379/0"))
retention = timedelta(seconds=float(os.environ.get("RESTATE_REDIS_DEMO_RETENTION", "3600")))

cart_object = restate.VirtualObject(cart.SERVICE)
order_workflow = restate.Workflow(fulfilment.SERVICE)


@order_workflow.main()
async def run(ctx: WorkflowContext, order: dict[str, Any]) -> str:
    """Fulfil one order: ``{"cart": ..., "items": {...}}``; returns the final status."""
    fulfilment.apply_run(ctx, order["cart"], order["items"])  # type: ignore[arg-type]
    return fulfilment.STEPS[-1]


@order_workflow.handler()
async def status(ctx: WorkflowSharedContext) -> dict[str, Any]:
    return await fulfilment.read_status(ctx)


@cart_object.handler()
async def add_item(ctx: ObjectContext, item: dict[str, Any]) -> int:
    """``{"sku": ..., "qty": n}``; returns the new quantity of that sku."""
    return await cart.apply_add(ctx, item["sku"], item["qty"])  # type: ignore[arg-type]


@cart_object.handler()
async def remove_item(ctx: ObjectContext, item: dict[str, Any]) -> int:
    """``{"sku": ..., "qty": n}``; returns how many were actually removed."""
    return await cart.apply_remove(ctx, item["sku"], item["qty"])  # type: ignore[arg-type]


@cart_object.handler()
async def checkout(ctx: ObjectContext) -> dict[str, Any]:
    """Empty the cart into a new order and run its fulfilment workflow."""
    key = ctx.key()
    order = await cart.apply_checkout(ctx, key)  # type: ignore[arg-type]
    if order.order_id is not None:
        # A journaled call: a retry of this checkout replays its result instead of starting
        # the workflow again, and the workflow needs nothing of the cart's uncommitted state.
        await ctx.workflow_call(run, order.order_id, {"cart": key, "items": order.items})
    return {"order_id": order.order_id, "items": order.items}


@cart_object.handler(kind="shared")
async def view(ctx: ObjectSharedContext) -> dict[str, int]:
    items: dict[str, int] = await ctx.get("items") or {}
    return items


store.restate_state()(cart_object)
store.restate_state(workflow_retention=retention)(order_workflow)

app = restate.app([cart_object, order_workflow])
