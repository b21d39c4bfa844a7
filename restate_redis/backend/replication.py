"""``min_replicas``: a commit and its WAIT in one round trip, on one connection.

WAIT counts the replicas that acknowledged every write made so far *on the connection it is
sent on*, so it must follow the commit script on the same connection. Both commands go out
in one write (a pipeline without MULTI), so durability costs no extra round trip. A commit that
``commit.lua`` recognises as already applied ({2}) writes something all the same, so the WAIT
behind it also covers the earlier attempt that applied.
"""

from __future__ import annotations

from typing import Any, Protocol

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import AskError, MovedError, NoScriptError, TryAgainError

from ..errors import ReplicationError, StateError, where
from ..observe import SessionRecord
from . import replies
from .connection import RedisClient
from .scripts import Scripts


class Replicated(Protocol):
    """What a commit with WAIT needs of its store."""

    client: RedisClient
    scripts: Scripts
    min_replicas: int
    replica_timeout: float


async def commit_and_wait(
    store: Replicated, keys: list[str], args: list[Any], record: SessionRecord
) -> Any:
    """The commit.lua reply; ReplicationError when fewer than min_replicas confirmed it."""
    client = store.client
    if isinstance(client, RedisCluster):
        reply, acked = await _on_cluster(store, client, keys, args)
    else:
        reply, acked = await _on_server(store, client, keys, args)
    if replies.refusal(reply) is None and acked < store.min_replicas:
        raise ReplicationError(
            f"the commit of {where(record.service, record.key)} was applied on the primary, "
            f"but only {acked} of "
            f"min_replicas={store.min_replicas} replicas confirmed it within "
            f"replica_timeout={store.replica_timeout:g}s; it can be lost on a failover"
        )
    return reply


def _commands(store: Replicated, keys: list[str], args: list[Any]) -> list[tuple[Any, ...]]:
    wait_ms = max(1, int(store.replica_timeout * 1000))
    return [
        ("EVALSHA", store.scripts.commit.sha, len(keys), *keys, *args),
        ("WAIT", store.min_replicas, wait_ms),
    ]


async def _on_server(
    store: Replicated, client: Redis, keys: list[str], args: list[Any]
) -> tuple[Any, int]:
    for _ in range(2):
        async with client.pipeline(transaction=False) as pipe:
            for command in _commands(store, keys, args):
                pipe.execute_command(*command)
            reply, acked = await pipe.execute(raise_on_error=False)
        if isinstance(reply, NoScriptError):  # a restarted or flushed server
            await client.script_load(store.scripts.commit.script)
            continue
        for result in (reply, acked):
            if isinstance(result, BaseException):
                raise result
        return reply, int(acked)
    raise StateError("commit.lua could not be loaded on the server")


async def _on_cluster(
    store: Replicated, client: RedisCluster, keys: list[str], args: list[Any]
) -> tuple[Any, int]:
    # WAIT has no key, so a cluster pipeline would send it to some other node: hold one
    # connection to the master of the object's slot for both commands instead.
    node = client.get_node_from_key(keys[0])
    if node is None:  # the slot has no master right now: retried, like CLUSTERDOWN
        raise TryAgainError(f"TRYAGAIN no master serves the slot of {keys[0]!r}")
    for _ in range(2):
        conn = node.acquire_connection()
        try:
            await conn.send_packed_command(conn.pack_commands(_commands(store, keys, args)))
            try:
                reply = await conn.read_response()
            except NoScriptError:
                await conn.read_response()
                await node.execute_command("SCRIPT", "LOAD", store.scripts.commit.script)
                continue
            except MovedError as exc:
                # The slot moved (resharding, failover): note where, and let the retry policy
                # send the commit again, to the new owner.
                await conn.read_response()
                await client.nodes_manager.move_slot(exc)
                raise TryAgainError(f"TRYAGAIN slot moved: {exc}") from exc
            except AskError as exc:  # mid-migration: retried until the slot has moved
                await conn.read_response()
                raise TryAgainError(f"TRYAGAIN slot migrating: {exc}") from exc
            acked = await conn.read_response()
        except BaseException:
            await conn.disconnect()
            raise
        finally:
            node.release(conn)
        return reply, int(acked)
    raise StateError("commit.lua could not be loaded on the server")
