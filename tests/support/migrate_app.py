"""The SDK services of the migration tests: ``hypercorn tests.support.migrate_app:app``.

The same handlers keep their state in Restate (``MIGRATE_STATE=native``, the SDK's own state)
or in Redis (``MIGRATE_STATE=redis``: every handler under ``@store.restate_state()``), so a
test can build state one way, move it with ``restate-redis import --from-restate`` or
``export --to-restate``, redeploy the other way, and read it back through the same handlers.
"""

from __future__ import annotations

import os
from typing import Any

import restate
from restate.context import (
    ObjectContext,
    ObjectSharedContext,
    WorkflowContext,
    WorkflowSharedContext,
)

from restate_redis import RedisStateStore

URL = os.environ.get("RESTATE_REDIS_URL", "redis://127.0.0.1:6379/0")
NAMESPACE = os.environ.get("RESTATE_REDIS_NAMESPACE", "restate")
MODE = os.environ.get("MIGRATE_STATE", "native")

store = RedisStateStore.from_url(URL, namespace=NAMESPACE)

profile = restate.VirtualObject("Profile")


async def read_all(ctx: Any) -> dict[str, Any]:
    names = await ctx.state_keys()
    return {name: await ctx.get(name) for name in sorted(names)}


@profile.handler()
async def put(ctx: ObjectContext, values: dict[str, Any]) -> dict[str, Any]:
    """Set each state key to its value (null: clear it); the whole state afterwards."""
    for name, value in values.items():
        if value is None:
            ctx.clear(name)
        else:
            ctx.set(name, value)
    return await read_all(ctx)


@profile.handler(kind="shared")
async def read(ctx: ObjectSharedContext) -> dict[str, Any]:
    return await read_all(ctx)


signup = restate.Workflow("Signup")


@signup.main()
async def run(ctx: WorkflowContext, email: str) -> str:
    ctx.set("email", email)
    ctx.set("steps", ["verify", "welcome"])
    return f"signed up {email}"


@signup.handler()
async def state(ctx: WorkflowSharedContext) -> dict[str, Any]:
    return await read_all(ctx)


if MODE == "redis":
    store.restate_state()(profile)
    store.restate_state()(signup)
elif MODE != "native":
    raise SystemExit(f"MIGRATE_STATE must be native or redis, not {MODE!r}")

app = restate.app([profile, signup])
