"""An object's bookkeeping field written by a test, to stand for data another writer left
(the format is described in restate_redis/keyspace.py)."""

from __future__ import annotations

import msgpack


def packed_meta(
    version: int,
    size: int | None = None,
    changed_ms: int | None = None,
    commit: str | None = None,
    flags: str = "",
) -> bytes:
    """The value of the state hash's field ``"\\xff"`` as the scripts store it: a MessagePack
    array [v, b, t, c, flags] (b -1 while unknown; t in whole seconds, 0 for none; c the
    tag's bytes, given here in hex as ``Meta.commit`` shows it, "" for none). Strings are
    packed as Lua's cmsgpack packs them (MessagePack str, not bin)."""
    return msgpack.packb(
        [
            version,
            -1 if size is None else size,
            (changed_ms or 0) // 1000,
            bytes.fromhex(commit) if commit else b"",
            flags.encode("ascii"),
        ],
        use_bin_type=False,
    )
