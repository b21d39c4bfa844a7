"""A model-based test: random sequences of get / set / clear / clear_all / state_keys in eager,
lazy and preload sessions, some ending in an exception, checked against a plain dict."""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack
import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from restate_redis import RedisStateStore, Session
from tests.support.keys import state_fields
from tests.support.servers import Server

NAMES = st.sampled_from(["a", "b", "", "ü", "{x}", "k:1", "*"])
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=6,
)
MODES = st.sampled_from([True, False]) | st.lists(NAMES, max_size=3)


class Failed(Exception):
    """Raised inside a session to discard its writes."""


def make_machine(url: str) -> type[RuleBasedStateMachine]:
    class StateModel(RuleBasedStateMachine):
        """``committed`` is what Redis must hold; ``pending`` what the open session sees."""

        @initialize()
        def start(self) -> None:
            self.loop = asyncio.new_event_loop()
            self.client = aioredis.Redis.from_url(url)
            self.run(self.client.flushall())
            self.store = RedisStateStore(self.client, lease_ttl=5, acquire_timeout=5)
            self.committed: dict[str, Any] = {}
            self.pending: dict[str, Any] = {}
            self.session: Session | None = None

        def run(self, coro: Any) -> Any:
            return self.loop.run_until_complete(coro)

        def teardown(self) -> None:
            if not hasattr(self, "loop"):
                return
            if self.session is not None:
                self.run(self.session.__aexit__(Failed, Failed(), None))
            self.run(self.store.aclose())
            self.run(self.client.aclose())
            self.loop.close()

        # -- sessions ---------------------------------------------------------------------

        @precondition(lambda self: self.session is None)
        @rule(preload=MODES)
        def open_session(self, preload: bool | list[str]) -> None:
            self.session = self.run(
                self.store.object("Model", "o", state_preload=preload).__aenter__()
            )
            self.pending = dict(self.committed)

        @precondition(lambda self: self.session is not None)
        @rule()
        def commit(self) -> None:
            assert self.session is not None
            self.run(self.session.__aexit__(None, None, None))
            self.session = None
            self.committed = self.pending

        @precondition(lambda self: self.session is not None)
        @rule()
        def fail(self) -> None:
            assert self.session is not None
            self.run(self.session.__aexit__(Failed, Failed(), None))
            self.session = None

        # -- the API ----------------------------------------------------------------------

        @precondition(lambda self: self.session is not None)
        @rule(name=NAMES)
        def get(self, name: str) -> None:
            assert self.session is not None
            assert self.run(self.session.get(name)) == self.pending.get(name)

        @precondition(lambda self: self.session is not None)
        @rule(name=NAMES, value=VALUES)
        def set(self, name: str, value: Any) -> None:
            assert self.session is not None
            self.session.set(name, value)
            self.pending[name] = value

        @precondition(lambda self: self.session is not None)
        @rule(name=NAMES)
        def clear(self, name: str) -> None:
            assert self.session is not None
            self.session.clear(name)
            self.pending.pop(name, None)

        @precondition(lambda self: self.session is not None)
        @rule()
        def clear_all(self) -> None:
            assert self.session is not None
            self.session.clear_all()
            self.pending = {}

        @precondition(lambda self: self.session is not None)
        @rule()
        def state_keys(self) -> None:
            assert self.session is not None
            assert self.run(self.session.state_keys()) == sorted(self.pending)

        @precondition(lambda self: self.session is not None)
        @rule()
        def get_all(self) -> None:
            assert self.session is not None
            assert self.run(self.session.get_all()) == self.pending

        @rule(name=NAMES)
        def shared_read(self, name: str) -> None:
            """A concurrent reader sees the last commit, never the open session's writes."""

            async def read() -> tuple[Any, list[str]]:
                async with self.store.object("Model", "o", shared=True) as ctx:
                    return await ctx.get(name), await ctx.state_keys()

            value, keys = self.run(read())
            assert value == self.committed.get(name)
            assert keys == sorted(self.committed)

        @invariant()
        def redis_holds_the_commits(self) -> None:
            if not hasattr(self, "loop"):
                return
            state = self.store.keyspace.object_keys("Model", "o").state
            raw = state_fields(self.run(self.client.hgetall(state)))
            held = {k.decode(): msgpack.unpackb(v, raw=False) for k, v in raw.items()}
            assert held == self.committed

    return StateModel


@pytest.mark.parametrize("server", ["valkey"], indirect=True)
def test_sessions_behave_like_a_dict(server: Server) -> None:
    machine = make_machine(server.url)
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=60,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
