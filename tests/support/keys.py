"""What the tests read of an object's hash: its state keys, and its bookkeeping (the hash's
reserved fields, keyspace.py)."""

from __future__ import annotations

from typing import Any

from restate_redis.keyspace import META_FIELD, PRIOR_FIELD, Meta, reserved


def state_fields(fields: dict[Any, Any]) -> dict[Any, Any]:
    """An HGETALL of a state hash without its reserved fields: the state as stored."""
    return {f: v for f, v in fields.items() if not reserved(f)}


def state_names(names: Any) -> set[Any]:
    """An HKEYS of a state hash without its reserved fields."""
    return {f for f in names if not reserved(f)}


def meta_of(fields: dict[Any, Any]) -> Meta:
    """The bookkeeping in an HGETALL of a state hash (``Meta()`` when it has none)."""
    return Meta.parse(fields.get(META_FIELD, fields.get(META_FIELD.decode("latin-1"))))


def has_prior(fields: dict[Any, Any]) -> bool:
    return PRIOR_FIELD in fields


async def read_meta(client: Any, state_key: str) -> Meta:
    """The bookkeeping of the object whose state hash is ``state_key``."""
    return Meta.parse(await client.hget(state_key, META_FIELD))


async def read_state(client: Any, state_key: str) -> dict[Any, Any]:
    """The state keys and values stored in hash ``state_key``."""
    return state_fields(await client.hgetall(state_key))
