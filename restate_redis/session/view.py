"""The read view of a session: what it has read of the state, and how it reads the rest.

Eager sessions hold the whole state from the open; preload sessions the named keys; lazy
sessions read a key with one HGET on first use and cache it. A replay (a session whose commit
id was already applied) reads the state as it was before that commit.

State keys with an expiry of their own: the open says when the first of them expires. Until
then what was read is right; from then on the view keeps nothing it read (each read asks
Redis, which never returns an expired key), except for the length of one ``get_all``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

from ..backend.engine import Cursor
from ..backend.replies import Opened, Replay
from .target import MISSING, Target

SCAN_WHOLE = 10_000  # state_keys() / get_all() read a state of up to this many keys at once,
SCAN_PAGE = 1_000  # and a larger one in HSCAN pages of about this many


class ReadView:
    """State keys read so far (stored bytes, or MISSING when known to be absent)."""

    __slots__ = (
        "cache",
        "complete",
        "expires_at",
        "held",
        "overlay",
        "source",
        "stored_keys",
        "target",
        "volatile",
    )

    def __init__(self, target: Target) -> None:
        self.target = target
        self.cache: dict[str, Any] = {}
        self.complete = False  # cache holds every stored key
        self.stored_keys: set[str] | None = None  # lazy: the stored names, once read
        # A replay too large to load: the prior values of the keys the replayed commit
        # changed (over the state), or the whole prior state read from the old key.
        self.overlay: dict[str, Any] = {}
        self.source = target.keys.state  # the hash lazy reads go to
        self.expires_at: float | None = None  # monotonic time the first key with a ttl expires
        self.volatile = False  # past it: nothing read is kept
        self.held = 0  # > 0: what is read is kept all the same (inside get_all)

    def load(self, opened: Opened, preload: tuple[str, ...]) -> None:
        """Take what the open read (``preload``: the names it read values of)."""
        data, field = opened.data, self.target.field
        if opened.replay is Replay.OVERLAY:  # prior values of what it changed, over the state
            for i in range(0, len(data), 2):
                raw = data[i + 1]
                self.overlay[field(data[i])] = raw[1:] if raw[:1] == b"+" else MISSING
            self.cache.update(self.overlay)
        elif opened.replay is Replay.OLD:  # the whole prior state, renamed aside by a clear_all
            self.source = self.target.keys.old
        if opened.mode == "eager":
            pairs = iter(data)
            try:
                self.cache = {f.decode(): v for f, v in zip(pairs, pairs, strict=True)}
            except (AttributeError, UnicodeDecodeError):  # str replies, or a non-UTF-8 name
                self.cache = {field(data[i]): data[i + 1] for i in range(0, len(data), 2)}
            self.complete = True
        elif preload and opened.replay is Replay.NONE:  # preload, or a lazy session's first read
            self.cache = {
                n: MISSING if v is None else v for n, v in zip(preload, data, strict=True)
            }
        if opened.replay is Replay.NONE:  # a replay reads the state recorded before
            self.expires_at = opened.expires_at

    def _expire(self) -> None:
        """Once the first state key with an expiry of its own expired, forget what was read
        (from then on nothing is kept: the view does not know when the next one expires)."""
        expires_at = self.expires_at
        if expires_at is not None and time.monotonic() >= expires_at and not self.held:
            self.expires_at = None
            self.volatile = True
            self._forget()

    def _forget(self) -> None:
        self.cache = dict(self.overlay)
        self.complete = False
        self.stored_keys = None

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        """What is read inside the block is kept until it ends, even once keys expire (so a
        get_all reads the state once, then each key from what it read)."""
        if self.expires_at is not None:
            self._expire()
        self.held += 1
        try:
            yield
        finally:
            self.held -= 1
            if not self.held and self.volatile:
                self._forget()

    def load_snapshot(self, data: dict[str, bytes], expires_at: float | None = None) -> None:
        """Take the whole state from a snapshot found current (read, never changed), right
        until ``expires_at`` (see :meth:`_expire`)."""
        self.cache = data
        self.complete = True
        self.expires_at = expires_at

    def known(self, name: str) -> Any:
        """The stored bytes or None when known without a round trip, else MISSING."""
        if self.expires_at is not None:
            self._expire()
        cached = self.cache.get(name, MISSING if self.complete else None)
        if cached is None:
            if self.stored_keys is not None and name not in self.stored_keys:
                return None  # state_keys() already showed it is not stored
            return MISSING
        return None if cached is MISSING else cached

    async def fetch(self, name: str) -> bytes | None:
        """One read of a state key that is not known yet; the answer is cached."""
        target, source = self.target, self.source
        value = await target.read(source, target.backend.read_field(target, source, name))
        if not self.volatile or self.held:
            self.cache[name] = MISSING if value is None else value
        return value

    async def names(self) -> set[str]:
        """The names of the stored state keys (read once)."""
        if self.expires_at is not None:
            self._expire()
        if self.complete:
            return {k for k, v in self.cache.items() if v is not MISSING}
        if self.stored_keys is None:
            fields = await self._scan(values=False)
            self.stored_keys = {self.target.field(f) for f in fields}
            for name, raw in self.overlay.items():
                if raw is MISSING:
                    self.stored_keys.discard(name)
                else:
                    self.stored_keys.add(name)
        names = set(self.stored_keys)
        if self.volatile and not self.held:
            self.stored_keys = None
        return names

    async def load_all(self) -> None:
        """Read every stored key not read yet."""
        if self.complete:
            return
        data = await self._scan(values=True)
        pairs = iter(data)
        for f, v in zip(pairs, pairs, strict=True):
            self.cache.setdefault(self.target.field(f), v)
        self.complete = True

    async def _scan(self, *, values: bool) -> list[Any]:
        """Every field (``values``: field, value, ...) of the hash reads go to: the whole hash
        in one round trip up to ``SCAN_WHOLE`` fields, in pages beyond."""
        target, source = self.target, self.source
        items: list[Any] = []
        seen: set[Any] = set()
        cursor: Cursor = "0"
        while True:
            cursor, page = await target.read(
                source,
                target.backend.read_names(
                    target, source, cursor, values=values, whole=SCAN_WHOLE, page=SCAN_PAGE
                ),
            )
            if cursor in (b"0", "0", 0) and not items:
                return list(page)  # one page: the whole hash, read atomically
            step = 2 if values else 1
            for i in range(0, len(page), step):
                if page[i] not in seen:  # HSCAN may return a field twice
                    seen.add(page[i])
                    items.extend(page[i : i + step])
            if cursor in (b"0", "0", 0):
                return items
