"""An example Restate service whose K/V state lives in Redis: ``hypercorn examples.service:app``.

- ``Counter`` (Virtual Object): ``add`` (exclusive) and ``get`` (shared), state in Redis through
  ``@store.restate_state()`` on each handler.
- ``NativeCounter``: the same handlers on Restate's own state, to compare with;
  ``PingCounter``: its ``add`` plus two plain Redis PINGs, the floor of any external state.
- ``Signup`` (Workflow): ``run`` once per id, waiting for ``confirm``; ``status`` reads the
  state; every handler switched to Redis at once with ``store.restate_state(...)(signup)``.
- ``BigNative``, ``BigNativeLazy``, ``BigRedis``, ``BigRedisLazy``: the large-state comparison of
  ``examples/latency.py``: ``fill`` writes state keys of 1 KiB, ``touch`` reads one key and
  writes one; on Restate's state (eager, and lazy with ``enable_lazy_state=True``) and on Redis
  (eager, and lazy with ``state_preload=False``).

Environment: ``RESTATE_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``) and
``RESTATE_REDIS_NAMESPACE`` (default ``restate``).
"""

from __future__ import annotations

import os
import uuid
from datetime import timedelta

import restate
from restate.context import (
    ObjectContext,
    ObjectSharedContext,
    WorkflowContext,
    WorkflowSharedContext,
)

from restate_redis import RedisStateStore

store = RedisStateStore.from_url(
    os.environ.get("RESTATE_REDIS_URL", "redis://127.0.0.1:6379/0"),
    namespace=os.environ.get("RESTATE_REDIS_NAMESPACE", "restate"),
)

# -- a Virtual Object with its state in Redis ---------------------------------------------------

counter = restate.VirtualObject("Counter")


@counter.handler()
@store.restate_state()
async def add(ctx: ObjectContext, delta: int) -> int:
    """Add ``delta`` to the count and return the new count."""
    n = await ctx.get("count", type_hint=int) or 0
    ctx.set("count", n + delta)
    return n + delta


@counter.handler(kind="shared")
@store.restate_state()
async def get(ctx: ObjectSharedContext) -> int:
    """The current count."""
    return await ctx.get("count", type_hint=int) or 0


@counter.handler()
@store.restate_state()
async def reset(ctx: ObjectContext) -> None:
    """Forget the count."""
    ctx.clear_all()


# -- the same object on Restate's native state, for comparison ----------------------------------

native_counter = restate.VirtualObject("NativeCounter")


@native_counter.handler("add")
async def native_add(ctx: ObjectContext, delta: int) -> int:
    n = await ctx.get("count", type_hint=int) or 0
    ctx.set("count", n + delta)
    return n + delta


@native_counter.handler("get", kind="shared")
async def native_get(ctx: ObjectSharedContext) -> int:
    return await ctx.get("count", type_hint=int) or 0


# -- the native object plus two plain Redis round trips: the least that any state kept outside
#    Restate costs (read before the handler, write before its result); the latency
#    comparison's floor -------------------------------------------------------------------------

ping_counter = restate.VirtualObject("PingCounter")


@ping_counter.handler("add")
async def ping_add(ctx: ObjectContext, delta: int) -> int:
    await store.client.ping()
    n = await ctx.get("count", type_hint=int) or 0
    ctx.set("count", n + delta)
    await store.client.ping()
    return n + delta


# -- a Workflow, all of its handlers switched at once -------------------------------------------

signup = restate.Workflow("Signup")


@signup.main()
async def run(ctx: WorkflowContext, email: str) -> str:
    """Sign ``email`` up: create the user, wait for the confirmation, record the outcome."""
    ctx.set("email", email)
    user_id = await ctx.run_typed("create user", lambda: f"user-{uuid.uuid4().hex[:8]}")
    ctx.set("user_id", user_id)
    confirmed = await ctx.promise("confirmed", type_hint=bool).value()
    outcome = "active" if confirmed else "rejected"
    ctx.set("status", outcome)
    return outcome


@signup.handler()
async def confirm(ctx: WorkflowSharedContext, ok: bool) -> None:
    """The user's answer (the link in the e-mail)."""
    await ctx.promise("confirmed", type_hint=bool).resolve(ok)


@signup.handler()
async def status(ctx: WorkflowSharedContext) -> dict[str, str | None]:
    """Empty while run is waiting (its state is committed when it returns), then the outcome."""
    return {
        "email": await ctx.get("email"),
        "user_id": await ctx.get("user_id"),
        "status": await ctx.get("status"),
    }


store.restate_state(workflow_retention=timedelta(days=1))(signup)

# -- large state: one key read and one written on an object of many 1 KiB keys ----------------


def big_value(i: int) -> str:
    """State key ``k<i>``'s value: 1 KiB, starting with its number."""
    return f"{i:04d}".ljust(1024, "x")


async def big_fill(ctx: ObjectContext, keys: list[int]) -> int:
    """Write state keys ``k<i>`` of 1 KiB for every ``i`` in ``keys``."""
    for i in keys:
        ctx.set(f"k{i:04d}", big_value(i))
    return len(keys)


async def big_touch(ctx: ObjectContext, key: str) -> str:
    """Read state key ``key`` and write one small key: ``"<key>:<length of its value>"``."""
    value = await ctx.get(key, type_hint=str) or ""
    ctx.set("touched", key)
    return f"{key}:{len(value)}"


big_native = restate.VirtualObject("BigNative")
big_native_lazy = restate.VirtualObject("BigNativeLazy", enable_lazy_state=True)
big_redis = restate.VirtualObject("BigRedis")
big_redis_lazy = restate.VirtualObject("BigRedisLazy")
for obj in (big_native, big_native_lazy):
    obj.handler("fill")(big_fill)
    obj.handler("touch")(big_touch)
big_redis.handler("fill")(store.restate_state()(big_fill))
big_redis.handler("touch")(store.restate_state()(big_touch))
big_redis_lazy.handler("fill")(store.restate_state(state_preload=False)(big_fill))
big_redis_lazy.handler("touch")(store.restate_state(state_preload=False)(big_touch))

big = [big_native, big_native_lazy, big_redis, big_redis_lazy]
app = restate.app([counter, native_counter, ping_counter, signup, *big])
