"""Hand-off of an object's lease between the sessions of one store.

When sessions of one process wait for the same object, they wait here, in order, rather than
each asking Redis again (a busy open, a wait for the release signal, another open). The
holder's commit (or release) hands the lease to the next local waiter in the same script: it
writes the waiter's token into the lease instead of deleting it, so the lease never becomes
free in between. The waiter then starts with the state the holder left (the snapshot it
committed) and its version, with no open round trip.

Waiters in other processes are not starved: after ``HANDOFF_LIMIT`` hand-offs in a row the
holder releases the lease normally (its release signal wakes the longest waiting process
first) and the next local waiter queues behind them for the signal before it opens.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from .cache import Snapshot

HANDOFF_LIMIT = 8
"""Hand-offs in a row on one object before the lease is released for other processes."""


@dataclass(frozen=True, slots=True)
class Grant:
    """The lease was handed over: the holder's commit left this version (and this state,
    when it had the whole state)."""

    version: int
    snapshot: Snapshot | None


class Turn:
    """What a waiter is told when its turn comes."""

    OPEN = "open"
    """Open as usual: the lease was released (or its holder failed)."""
    YIELD = "yield"
    """Open once the release signal came: other processes go first."""


@dataclass(slots=True)
class Waiter:
    token: str
    future: asyncio.Future[Grant | str]
    abandon: Callable[[], None]
    """Releases a lease handed to ``token`` after the waiter gave up."""


class _Object:
    __slots__ = ("streak", "token", "waiters")

    def __init__(self, token: str) -> None:
        self.waiters: deque[Waiter] = deque()
        self.streak = 0
        self.token = token  # the holder's


class LocalLeases:
    """The objects a session of this store holds (or is opening), with their local waiters."""

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held: dict[str, _Object] = {}

    def take(self, key: str, token: str) -> bool | None:
        """Take the object's local turn when no session of this store holds it (True); False
        when one does (then wait with :meth:`enter`); None when the holder has the same token
        (a retry of the same work, which re-enters the lease in Redis, outside the line)."""
        entry = self._held.get(key)
        if entry is None:
            self._held[key] = _Object(token)
            return True
        return None if entry.token == token else False

    async def enter(self, key: str, token: str, abandon: Callable[[], None]) -> Grant | str | None:
        """Take the object's local turn: None at once when no session of this store holds it,
        else, when the holder is done, a :class:`Grant` (the lease is ``token``'s now) or a
        :class:`Turn`. The caller bounds the wait; a cancelled wait gives up its place (and
        a lease handed to it as it gave up is released by ``abandon()``)."""
        entry = self._held.get(key)
        if entry is None:
            self._held[key] = _Object(token)
            return None
        waiter = Waiter(token, asyncio.get_running_loop().create_future(), abandon)
        entry.waiters.append(waiter)
        try:
            return await waiter.future
        except BaseException:
            if waiter.future.done() and not waiter.future.cancelled():
                # Its turn came as it gave up: the turn goes on, a handed lease is released.
                if isinstance(waiter.future.result(), Grant):
                    abandon()
                self.leave(key)
            elif waiter in entry.waiters:
                entry.waiters.remove(waiter)
            else:
                # Taken out of the line for a hand-off under way: the holder finds it gone.
                waiter.future.cancel()
            raise

    def waiting(self, key: str) -> bool:
        """Sessions of this store wait for ``key``."""
        entry = self._held.get(key)
        return entry is not None and bool(entry.waiters)

    def next_waiter(self, key: str) -> Waiter | None:
        """The waiter the holder of ``key`` may hand the lease to now, taken out of the line;
        None when there is none, or when the hand-offs in a row reached the limit."""
        entry = self._held.get(key)
        if entry is None or not entry.waiters or entry.streak >= HANDOFF_LIMIT:
            return None
        return entry.waiters.popleft()

    def handed(self, key: str, waiter: Waiter, grant: Grant) -> None:
        """The holder's script gave the lease to ``waiter``: its turn now."""
        entry = self._held[key]
        entry.streak += 1
        if not waiter.future.done():
            entry.token = waiter.token
            waiter.future.set_result(grant)
        else:  # it gave up meanwhile: its lease is released, the turn goes on
            waiter.abandon()
            entry.streak = 0
            self.leave(key)

    def leave(self, key: str, waiter: Waiter | None = None, signalled: bool = False) -> None:
        """The holder is done without a hand-off (``waiter``: one taken out of the line for
        a hand-off that did not happen): the next waiter opens, else the object is free.
        ``signalled``: its release woke a session waiting in Redis (another process's): after
        a streak of hand-offs, the next one here lets that one go first."""
        entry = self._held.get(key)
        if entry is None:
            return
        if waiter is not None:
            entry.waiters.appendleft(waiter)
        turn = Turn.YIELD if entry.streak >= HANDOFF_LIMIT and signalled else Turn.OPEN
        entry.streak = 0
        while entry.waiters:
            nxt = entry.waiters.popleft()
            if not nxt.future.done():
                entry.token = nxt.token
                nxt.future.set_result(turn)
                return
        del self._held[key]
