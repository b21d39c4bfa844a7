"""The exclusive lease of a session: its token, its renewal while the session runs, and its
release. (The lease is taken by the open and released by the commit, in the same scripts.)"""

from __future__ import annotations

import asyncio
import logging

from ..backend.replies import Refusal, Released
from ..errors import LeaseLostError
from .target import Target

log = logging.getLogger("restate_redis")


class Lease:
    """The lease a session holds its object under (its token is the target's: "" for a
    shared session, which holds none)."""

    __slots__ = ("_renewer", "_timer", "lost", "maybe_taken", "target")

    def __init__(self, target: Target) -> None:
        self.target = target
        self.lost = False
        # False while no open may have taken the lease: before the first, and after an open
        # the script refused (busy, completed, a foreign key): those take nothing.
        self.maybe_taken = False
        self._renewer: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def lost_error(self) -> LeaseLostError:
        """The lease is gone: mark it, and the error that says so."""
        self.lost = True
        return LeaseLostError(
            f"the lease of {self.target.where} expired or was taken over before the commit "
            f"(lease_ttl={self.target.backend.lease_ttl:g}s); nothing was written"
        )

    def start_renewal(self) -> None:
        # A timer, not a task: most sessions end before the first renewal is due, and
        # cancelling a timer costs no event loop turn (a task per session cost ~40 us).
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.target.backend.lease_ttl / 3, self._start_renewer)

    def stop_renewal(self) -> asyncio.Task[None] | None:
        """Stop renewing; the renewal task to await when one is running (most sessions end
        before the first renewal is due, and then nothing is awaited)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        renewer, self._renewer = self._renewer, None
        if renewer is not None:
            renewer.cancel()
        return renewer

    def _start_renewer(self) -> None:
        self._timer = None
        self._renewer = asyncio.create_task(self._renew_loop())

    async def _renew_loop(self) -> None:
        """Renew now, then every third of the lease ttl (started one third after the open)."""
        target, backend = self.target, self.target.backend
        interval = backend.lease_ttl / 3
        while True:
            try:
                renewed = await backend.renew(target)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep trying until the lease runs out
                log.warning("renewing the lease of %s failed: %s", target.where, exc)
            else:
                if not renewed:
                    self.lost = True
                    log.warning("the lease of %s was lost", target.where)
                    return
            await asyncio.sleep(interval)

    async def release(self, handoff: str = "") -> Released:
        """Give the lease up without writing, waking one waiter (``handoff``: or hand it to
        that token); falsy when it was no longer held, SIGNALLED when it woke a waiter."""
        if self.lost:
            return Released.NOT_HELD
        target = self.target
        released = await target.backend.release(target, handoff)
        if isinstance(released, Refusal):  # a key of the wrong type
            raise target.wrong_type(released.found, released.where)
        return released

    def release_soon(self) -> asyncio.Future[None] | None:
        """Give the lease back without waiting for the reply (a session that wrote nothing);
        what ends with the release when later commands could overtake it, else None."""
        if self.lost:
            return None
        return self.target.backend.release_soon(self.target)

    def release_later(self) -> None:
        """Release in a task of the backend's that outlives the session (see the open)."""
        self.target.backend.release_later(self.target)
