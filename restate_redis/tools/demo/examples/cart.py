"""A shopping cart Virtual Object: exclusive add / remove / checkout, shared view.

State keys of one cart: ``items`` (sku -> quantity), ``ops`` (how many exclusive handlers
ran on it) and ``orders`` (ids of the orders it checked out, oldest first).

Each handler's state logic (``apply_*``) works on any context with ``get / set / clear``: a
:class:`~restate_redis.session.Session` here, the context of a restate-sdk handler in
:mod:`restate_redis.tools.demo.examples.sdk`, so that both demos run the same services.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ....store import RedisStateStore
from . import fulfilment
from .fulfilment import StateContext

SERVICE = "Cart"


@dataclass
class Checkout:
    """What a checkout handed to fulfilment: None when the cart was empty."""

    order_id: str | None
    items: dict[str, int] = field(default_factory=dict)


async def _count(ctx: StateContext) -> int:
    ops: int = (await ctx.get("ops") or 0) + 1
    ctx.set("ops", ops)
    return ops


async def apply_add(ctx: StateContext, sku: str, qty: int) -> int:
    """Add ``qty`` of ``sku``; returns the new quantity of that sku."""
    items: dict[str, int] = await ctx.get("items") or {}
    items[sku] = items.get(sku, 0) + qty
    ctx.set("items", items)
    await _count(ctx)
    return items[sku]


async def apply_remove(ctx: StateContext, sku: str, qty: int) -> int:
    """Remove up to ``qty`` of ``sku``; returns how many were actually removed."""
    items: dict[str, int] = await ctx.get("items") or {}
    removed = min(qty, items.get(sku, 0))
    if removed == items.get(sku, 0):
        items.pop(sku, None)
    else:
        items[sku] -= removed
    ctx.set("items", items)
    await _count(ctx)
    return removed


async def apply_checkout(ctx: StateContext, cart: str) -> Checkout:
    """Empty the cart into a new order (its id is unique: the cart's ops count is in it)."""
    items: dict[str, int] = await ctx.get("items") or {}
    ops = await _count(ctx)
    if not items:
        return Checkout(None)
    order = Checkout(f"{cart}-order-{ops}", items)
    ctx.set("orders", [*(await ctx.get("orders") or []), order.order_id])
    ctx.clear("items")
    return order


async def add_item(store: RedisStateStore, cart: str, sku: str, qty: int) -> int:
    """Add ``qty`` of ``sku``; returns the new quantity of that sku."""
    async with store.object(SERVICE, cart) as ctx:
        return await apply_add(ctx, sku, qty)


async def remove_item(store: RedisStateStore, cart: str, sku: str, qty: int) -> int:
    """Remove up to ``qty`` of ``sku``; returns how many were actually removed."""
    async with store.object(SERVICE, cart) as ctx:
        return await apply_remove(ctx, sku, qty)


async def checkout(store: RedisStateStore, cart: str, retention: float) -> Checkout:
    """Empty the cart into a new order, then run that order's fulfilment workflow."""
    async with store.object(SERVICE, cart) as ctx:
        order = await apply_checkout(ctx, cart)
    if order.order_id is not None:
        # After the cart's commit, as a Restate handler would send to the workflow.
        await fulfilment.run(store, order.order_id, cart, order.items, retention)
    return order


async def view(store: RedisStateStore, cart: str) -> dict[str, int]:
    """The cart's items, read in a shared session (runs alongside the exclusive ones)."""
    async with store.object(SERVICE, cart, shared=True) as ctx:
        items: dict[str, int] = await ctx.get("items") or {}
        return items
