"""State moved between Restate's own K/V state and Redis, with a real restate-server:
``restate-redis import --from-restate`` and ``export --to-restate``.

The services (tests/support/migrate_app.py) build state through real invocations with the
SDK's native state; after the import, the same handlers redeployed under
``@store.restate_state()`` read the same values from Redis; after changes there and an export
back, the native handlers redeployed again read what Redis held.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import httpx
import msgpack
import pytest
import redis

from restate_redis import Keyspace
from restate_redis.keyspace import META_FIELD
from restate_redis.tools.stack import Deployment
from tests.support.bookkeeping import packed_meta
from tests.support.clirun import run_cli
from tests.support.keys import meta_of, state_fields
from tests.support.restate_server import ROOT, RestateStack, start_stack
from tests.support.servers import Server

NAMESPACE = "mig"
APP = "tests.support.migrate_app:app"
keyspace = Keyspace(NAMESPACE)
ODD_KEY = "{b}:%ü ☃"


def env(server: Server, mode: str) -> dict[str, str]:
    return {
        "RESTATE_REDIS_URL": server.url,
        "RESTATE_REDIS_NAMESPACE": NAMESPACE,
        "MIGRATE_STATE": mode,
    }


@pytest.fixture(scope="module")
def stack(redis_server: Server) -> Iterator[RestateStack]:
    s = start_stack(APP, env(redis_server, "native"))
    yield s
    s.stop()


def redeploy(stack: RestateStack, server: Server, mode: str) -> None:
    """The same services, their state kept ``mode``, registered as their latest revision."""
    deployment = Deployment(APP, env(server, mode), cwd=ROOT)
    deployment.launch()
    try:
        deployment.wait_ready()
        stack.server.register(deployment.url)
    except BaseException:
        deployment.stop()
        shutil.rmtree(deployment.dir, ignore_errors=True)
        raise
    old, stack.deployment = stack.deployment, deployment
    old.stop()
    shutil.rmtree(old.dir, ignore_errors=True)


def call(stack: RestateStack, path: str, body: Any = None) -> Any:
    reply = httpx.post(stack.ingress + path, json=body, timeout=60)
    assert reply.status_code == 200, f"{path}: {reply.status_code} {reply.text}"
    return reply.json()


def migrate(*args: str, server: Server) -> Any:
    out = run_cli(*args, "--url", server.url, "--namespace", NAMESPACE)
    assert out.returncode == 0, out.stderr
    return out


def test_state_moves_from_restate_to_redis_and_back(
    stack: RestateStack, redis_server: Server
) -> None:
    rc = redis.Redis.from_url(redis_server.url)
    alice = {"name": "Alice", "tags": ["a", "ü"], "n": 3, "nested": {"x": [1.5, None, True]}}
    odd = {"": "empty name", "q'uote": 1}
    from urllib.parse import quote

    odd_path = f"/Profile/{quote(ODD_KEY, safe='')}"
    assert call(stack, "/Profile/alice/put", alice) == alice
    assert call(stack, odd_path + "/put", odd) == odd
    assert call(stack, "/Signup/wf-1/run", "a@b.c") == "signed up a@b.c"
    wf_state = {"email": "a@b.c", "steps": ["verify", "welcome"]}
    assert rc.keys("mig:*") == []  # native: nothing in Redis yet

    admin = stack.server.admin
    dry = migrate("import", "--from-restate", admin, "--dry-run", server=redis_server)
    assert "would be 3 created" in dry.stdout and rc.keys("mig:*") == []
    out = migrate("import", "--from-restate", admin, server=redis_server)
    assert "imported 3 objects: 3 created" in out.stdout
    again = migrate("import", "--from-restate", admin, "Profile", "Signup", server=redis_server)
    assert "2 unchanged" in again.stdout or "3 unchanged" in again.stdout, again.stdout

    def stored(service: str, key: str) -> dict[str, Any]:
        raw = state_fields(rc.hgetall(keyspace.object_keys(service, key).state))
        return {k.decode(): msgpack.unpackb(v) for k, v in raw.items()}  # the store's serde

    assert stored("Profile", "alice") == alice and stored("Profile", ODD_KEY) == odd
    assert stored("Signup", "wf-1") == wf_state
    wf_hash = keyspace.object_keys("Signup", "wf-1").state
    meta = meta_of(rc.hgetall(wf_hash))
    assert (meta.version, meta.workflow) == (1, "completed")
    assert rc.pttl(wf_hash) > 0  # Restate's retention

    # The same handlers, state in Redis: they read what Restate held
    redeploy(stack, redis_server, "redis")
    assert call(stack, "/Profile/alice/read") == alice
    assert call(stack, odd_path + "/read") == odd
    assert call(stack, "/Signup/wf-1/state") == wf_state
    changed = {**alice, "name": "Alicia", "n": None}
    del changed["n"]
    assert call(stack, "/Profile/alice/put", {"name": "Alicia", "n": None}) == changed
    assert call(stack, "/Profile/bob/put", {"only": "in redis"}) == {"only": "in redis"}

    # ... and back: native handlers read what Redis held
    out = migrate("export", "--to-restate", admin, "Profile", server=redis_server)
    assert "exported 3 objects to Restate" in out.stderr, out.stderr
    redeploy(stack, redis_server, "native")
    assert call(stack, "/Profile/alice/read") == changed
    assert call(stack, "/Profile/bob/read") == {"only": "in redis"}
    assert call(stack, odd_path + "/read") == odd
    rc.close()


def test_a_value_that_is_not_json_needs_keep_bytes(
    stack: RestateStack, redis_server: Server
) -> None:
    rc = redis.Redis.from_url(redis_server.url)
    state = keyspace.object_keys("Profile", "raw").state
    # msgpack bytes, which JSON cannot carry: export --to-restate refuses, --keep-bytes moves
    rc.hset(state, "blob", msgpack.packb(b"\xff\x00"))
    rc.hset(state, META_FIELD, packed_meta(1))  # as a commit leaves it
    out = run_cli(
        "export", "--to-restate", stack.server.admin, "Profile", "--url", redis_server.url,
        "--namespace", NAMESPACE,
    )  # fmt: skip
    assert out.returncode == 1 and "--keep-bytes" in out.stderr, out.stderr
    rc.delete(state)
    out = run_cli(
        "import", "--from-restate", stack.server.admin, "Nope", "--url", redis_server.url,
    )  # fmt: skip
    assert out.returncode == 1 and "no Virtual Object or Workflow named 'Nope'" in out.stderr
    rc.close()
