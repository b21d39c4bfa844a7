"""The snapshot cache: the state of objects this store's sessions read or committed, kept so
that the next session on the same object can open without the state crossing the network.

A snapshot is only ever used after the open script has checked it: it names the object's
version and last commit id, and the script answers "cached" (no state bytes) only while both
are still what the object's bookkeeping holds. Each commit carries a unique id, so a snapshot
cannot match an object that changed, was recreated after expiring or purging, or lost its
last commit in a failover and committed again since; writes from the CLI, the UI or any other
process go through commits and so invalidate it too. Only writes that bypass the library
(another tool writing the hash directly) are not seen.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The whole state of one object at one commit."""

    version: int
    commit_id: str
    data: dict[str, bytes]
    """State key -> stored bytes; never changed once cached (sessions read it, and a commit
    caches a new dict)."""
    size: int
    """What it costs the cache: names and values, in bytes."""
    expires_at: float | None = None
    """``time.monotonic()`` when its first state key with an expiry of its own expires: the
    snapshot is no use from then on."""


class SnapshotCache:
    """Snapshots by object (its state key), least recently used first out, bounded in bytes.

    A state an eager open would not load (over ``entry_bytes`` or ``entry_keys``, the store's
    eager limits) is not kept either: such objects stay lazy, cache or not."""

    __slots__ = ("_entries", "entry_bytes", "entry_keys", "max_bytes", "size")

    def __init__(
        self, max_bytes: int, entry_bytes: int | None = None, entry_keys: int | None = None
    ) -> None:
        self.max_bytes = max_bytes
        self.entry_bytes = max_bytes if entry_bytes is None else min(max_bytes, entry_bytes)
        self.entry_keys = entry_keys
        self.size = 0
        self._entries: OrderedDict[str, Snapshot] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> Snapshot | None:
        snapshot = self._entries.get(key)
        if snapshot is not None:
            if snapshot.expires_at is not None and time.monotonic() >= snapshot.expires_at:
                self.drop(key)
                return None
            self._entries.move_to_end(key)
        return snapshot

    def put(
        self,
        key: str,
        version: int,
        commit_id: str,
        data: dict[str, bytes],
        expires_at: float | None = None,
    ) -> Snapshot:
        """Keep ``data`` (which the caller no longer changes) as the state at ``version`` /
        ``commit_id``, good until ``expires_at``; a state larger than the whole cache is not
        kept. The snapshot, kept or not."""
        self.drop(key)
        size = sum(len(name) + len(value) for name, value in data.items())
        snapshot = Snapshot(version, commit_id, data, size, expires_at)
        too_many = self.entry_keys is not None and len(data) > self.entry_keys
        if not commit_id or size > self.entry_bytes or too_many:
            return snapshot
        self._entries[key] = snapshot
        self.size += size
        while self.size > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.size -= evicted.size
        return snapshot

    def drop(self, key: str) -> None:
        snapshot = self._entries.pop(key, None)
        if snapshot is not None:
            self.size -= snapshot.size

    def clear(self) -> None:
        self._entries.clear()
        self.size = 0
