"""A shopping cart Virtual Object: exclusive add / remove / checkout, shared view.

State keys of one cart: ``items`` (sku -> quantity), ``ops`` (how many exclusive handlers
ran on it) and ``orders`` (ids of the orders it checked out, oldest first).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..store import RedisStateStore
from . import fulfilment

SERVICE = "Cart"


@dataclass
class Checkout:
    """What a checkout handed to fulfilment: None when the cart was empty."""

    order_id: str | None
    items: dict[str, int] = field(default_factory=dict)


async def add_item(store: RedisStateStore, cart: str, sku: str, qty: int) -> int:
    """Add ``qty`` of ``sku``; returns the new quantity of that sku."""
    async with store.object(SERVICE, cart) as ctx:
        items: dict[str, int] = await ctx.get("items") or {}
        items[sku] = items.get(sku, 0) + qty
        ctx.set("items", items)
        ctx.set("ops", (await ctx.get("ops") or 0) + 1)
        return items[sku]


async def remove_item(store: RedisStateStore, cart: str, sku: str, qty: int) -> int:
    """Remove up to ``qty`` of ``sku``; returns how many were actually removed."""
    async with store.object(SERVICE, cart) as ctx:
        items: dict[str, int] = await ctx.get("items") or {}
        removed = min(qty, items.get(sku, 0))
        if removed == items.get(sku, 0):
            items.pop(sku, None)
        else:
            items[sku] -= removed
        ctx.set("items", items)
        ctx.set("ops", (await ctx.get("ops") or 0) + 1)
        return removed


async def checkout(store: RedisStateStore, cart: str, retention: float) -> Checkout:
    """Empty the cart into a new order, then run that order's fulfilment workflow."""
    async with store.object(SERVICE, cart) as ctx:
        items: dict[str, int] = await ctx.get("items") or {}
        ops = (await ctx.get("ops") or 0) + 1
        ctx.set("ops", ops)
        order = Checkout(None)
        if items:
            order = Checkout(f"{cart}-order-{ops}", items)
            ctx.set("orders", [*(await ctx.get("orders") or []), order.order_id])
            ctx.clear("items")
    if order.order_id is not None:
        # After the cart's commit, as a Restate handler would send to the workflow.
        await fulfilment.run(store, order.order_id, cart, order.items, retention)
    return order


async def view(store: RedisStateStore, cart: str) -> dict[str, int]:
    """The cart's items, read in a shared session (runs alongside the exclusive ones)."""
    async with store.object(SERVICE, cart, shared=True) as ctx:
        items: dict[str, int] = await ctx.get("items") or {}
        return items
