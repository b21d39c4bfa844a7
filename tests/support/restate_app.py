"""The SDK services the Restate tests invoke: ``hypercorn tests.restate_app:app``.

One Counter Virtual Object and one Flow Workflow per loading mode (eager, lazy, preload),
with hooks that fail or kill an attempt at chosen points, so that Restate retries it. Hooks
count attempts in Redis under ``rrtest:`` (outside the store's namespace), since a killed
process forgets everything.
"""

from __future__ import annotations

import functools
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import redis.asyncio as aioredis
import restate
from restate.context import (
    ObjectContext,
    ObjectSharedContext,
    WorkflowContext,
    WorkflowSharedContext,
)
from restate.exceptions import TerminalError
from restate.serde import JsonSerde

from restate_redis import RedisStateStore

URL = os.environ.get("RESTATE_REDIS_URL", "redis://127.0.0.1:6379/0")
NAMESPACE = os.environ.get("RESTATE_REDIS_NAMESPACE", "restate")
RETENTION = timedelta(seconds=float(os.environ.get("RR_TEST_RETENTION", "2")))

# A lease_ttl far beyond the tests' request timeout: a retry that had to wait for the lease of
# its killed attempt to expire would time the test out.
store = RedisStateStore.from_url(URL, namespace=NAMESPACE, lease_ttl=120, acquire_timeout=120)
hooks = aioredis.Redis.from_url(URL)

MODES: dict[str, bool | list[str]] = {"eager": True, "lazy": False, "preload": ["count"]}


@dataclass
class Profile:
    name: str
    visits: int


async def attempt(ctx: Any, tag: str) -> int:
    """1 on an invocation's first attempt at this point, 2 on the next, and so on."""
    return int(await hooks.incr(f"rrtest:{tag}:{ctx.request().id}"))


def _crash() -> None:
    # Cut every connection of this worker at once, as a crash would.
    os.kill(os.getpid(), signal.SIGKILL)


def after_commit(action: str, times: int) -> Callable[[Any], Any]:
    """Around a restate_state handler: after its commit, fail or crash the first attempts."""

    def decorate(fn: Callable[..., Awaitable[Any]]) -> Any:
        @functools.wraps(fn)
        async def handler(ctx: Any, *args: Any) -> Any:
            result = await fn(ctx, *args)  # the state is committed in Redis here
            if await attempt(ctx, f"after-{action}") <= times:
                await hooks.rpush(f"rrtest:results:{ctx.request().id}", repr(result))
                if action == "crash":
                    _crash()
                raise RuntimeError("failing after the commit, to be retried")
            return result

        return handler

    return decorate


def make_counter(mode: str) -> restate.VirtualObject:
    counter = restate.VirtualObject(f"Counter_{mode}")
    state = store.restate_state(state_preload=MODES[mode])

    async def add_to_count(ctx: ObjectContext, delta: int) -> int:
        await hooks.incr(f"rrtest:add-attempts:{counter.name}")
        if ctx.session.replayed:  # type: ignore[attr-defined]
            await hooks.incr(f"rrtest:add-replays:{counter.name}")
        n: int = await ctx.get("count", type_hint=int) or 0
        ctx.set("count", n + delta)
        ctx.set("last", delta)
        return n + delta

    @counter.handler()
    @state
    async def add(ctx: ObjectContext, delta: int) -> int:
        return await add_to_count(ctx, delta)

    @state  # above the SDK's decorator works too
    @counter.handler()
    async def add_reversed(ctx: ObjectContext, delta: int) -> int:
        return await add_to_count(ctx, delta)

    @counter.handler()
    @state
    async def profile(ctx: ObjectContext, name: str) -> dict[str, Any]:
        """A dataclass with the default serde, a dict with the SDK's JsonSerde."""
        before = await ctx.get("profile", type_hint=Profile)
        visits = before.visits + 1 if before else 1
        ctx.set("profile", Profile(name, visits))
        ctx.set("json", {"name": name}, serde=JsonSerde())
        after = await ctx.get("profile", type_hint=Profile)
        raw = await ctx.get("json", serde=JsonSerde())
        return {"visits": after.visits if after else None, "json": raw, "is": type(after).__name__}

    @counter.handler(kind="shared")
    @state
    async def get(ctx: ObjectSharedContext) -> int:
        return await ctx.get("count", type_hint=int) or 0

    @counter.handler(kind="shared")
    @state
    async def keys(ctx: ObjectSharedContext) -> list[str]:
        return await ctx.state_keys()

    @counter.handler()
    @state
    async def add_fail_twice(ctx: ObjectContext, delta: int) -> int:
        result = await add_to_count(ctx, delta)
        if await attempt(ctx, "fail-before") <= 2:
            raise RuntimeError("failing before the commit, to be retried")
        return result

    @counter.handler()
    @after_commit("fail", times=2)
    @state
    async def add_then_fail(ctx: ObjectContext, delta: int) -> int:
        return await add_to_count(ctx, delta)

    @counter.handler()
    @after_commit("crash", times=1)
    @state
    async def add_then_crash(ctx: ObjectContext, delta: int) -> int:
        return await add_to_count(ctx, delta)

    @counter.handler()
    @state
    async def add_crash_in_session(ctx: ObjectContext, delta: int) -> int:
        result = await add_to_count(ctx, delta)
        if await attempt(ctx, "crash-in-session") <= 1:
            _crash()  # the lease is held by this attempt; its retry must not wait it out
        return result

    @counter.handler()
    @state
    async def add_then_terminal(ctx: ObjectContext, delta: int) -> int:
        await add_to_count(ctx, delta)
        ctx.clear_all()
        raise TerminalError("refused", status_code=422)

    @counter.handler(kind="shared")
    @state
    async def write_in_shared(ctx: ObjectSharedContext, delta: int) -> int:
        ctx.set("count", delta)  # type: ignore[attr-defined]
        return delta

    @counter.handler()
    @state
    async def edit(ctx: ObjectContext, ops: list[list[Any]]) -> list[str]:
        """Apply [["set", k, v (, ttl seconds)] | ["clear", k] | ["clear_all"]] then list the
        keys."""
        for op in ops:
            if op[0] == "set" and len(op) > 3:  # the integration's ctx.set takes a ttl
                ctx.set(op[1], op[2], ttl=op[3])  # type: ignore[call-arg]
            elif op[0] == "set":
                ctx.set(op[1], op[2])
            elif op[0] == "clear":
                ctx.clear(op[1])
            else:
                ctx.clear_all()
        return await ctx.state_keys()

    return counter


def make_flow(mode: str) -> restate.Workflow:
    flow = restate.Workflow(f"Flow_{mode}")

    @flow.main()
    async def run(ctx: WorkflowContext, name: str) -> str:
        ctx.set("name", name)
        greeting = await ctx.run_typed("greet", lambda: f"hello {name}")
        ctx.set("status", "done")
        await ctx.promise("finished").resolve(greeting)
        return greeting

    @flow.handler()
    async def status(ctx: WorkflowSharedContext) -> str | None:
        return await ctx.get("status")

    @flow.handler()
    async def finished(ctx: WorkflowSharedContext) -> str:
        value: str = await ctx.promise("finished").value()
        return value

    # The service-wide switch: every handler above, with the workflow's Redis retention.
    return store.restate_state(state_preload=MODES[mode], workflow_retention=RETENTION)(flow)


crash_flow = restate.Workflow("FlowCrash")


@crash_flow.main(name="run")
@after_commit("crash", times=1)
@store.restate_state(workflow_retention=timedelta(minutes=5))
async def crash_run(ctx: WorkflowContext, name: str) -> str:
    """Completes the workflow in Redis, then its worker dies; Restate retries the run."""
    ctx.set("name", name)
    runs = (await ctx.get("runs", type_hint=int) or 0) + 1
    ctx.set("runs", runs)
    return f"{name} run {runs}"


services: list[Any] = [make_counter(m) for m in MODES] + [make_flow(m) for m in MODES]
services.append(crash_flow)
app = restate.app(services)
