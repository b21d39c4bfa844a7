"""A loopback TCP proxy that cuts connections at random points, for the fault tests.

It runs its own event loop in a thread, so a test that blocks its own loop does not stall
it. Each chunk read from either side is forwarded, or, with the configured probabilities, the
connection is cut instead:

- ``cut_request``: a client->server chunk is dropped and the connection closed (the server
  never saw the request);
- ``cut_reply``: a server->client chunk is dropped and the connection closed (the server
  executed the request, the client never learns the outcome);
- ``cut_commit_reply``: the same, for the first reply after a chunk that carried ``marker``
  (the SHA of commit.lua): the commit was applied and its reply is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from tests.support.servers import free_port


@dataclass
class CutProxy:
    target_port: int
    cut_request: float = 0.0
    cut_reply: float = 0.0
    cut_commit_reply: float = 0.0
    marker: bytes = b""
    max_commit_cuts: int | None = None  # stop cutting commit replies after this many
    seed: int = 0
    port: int = field(default_factory=free_port)
    stats: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> CutProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()

    def set(self, **probabilities: float) -> None:
        """Change cut probabilities while running (e.g. all to 0 to let a run finish)."""
        with self._lock:
            for name, value in probabilities.items():
                setattr(self, name, value)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    def _roll(self, p: float) -> bool:
        with self._lock:
            return p > 0 and self._rng.random() < p

    async def _handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        try:
            sreader, swriter = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            cwriter.close()
            return
        self._writers |= {cwriter, swriter}
        self.stats["connections"] += 1
        commit_pending = False
        done = asyncio.Event()

        def cut(reason: str) -> None:
            self.stats[reason] += 1
            cwriter.transport.abort()
            swriter.transport.abort()
            done.set()

        async def upstream() -> None:
            nonlocal commit_pending
            while not done.is_set():
                chunk = await creader.read(65536)
                if not chunk:
                    break
                if self._roll(self.cut_request):
                    return cut("cut_request")
                if self.marker and self.marker in chunk:
                    commit_pending = True
                swriter.write(chunk)
                await swriter.drain()

        async def downstream() -> None:
            nonlocal commit_pending
            while not done.is_set():
                chunk = await sreader.read(65536)
                if not chunk:
                    break
                if commit_pending:
                    commit_pending = False
                    budget = self.max_commit_cuts
                    spent = budget is not None and self.stats["cut_commit_reply"] >= budget
                    if not spent and self._roll(self.cut_commit_reply):
                        return cut("cut_commit_reply")
                if self._roll(self.cut_reply):
                    return cut("cut_reply")
                cwriter.write(chunk)
                await cwriter.drain()

        async def quietly(pump: Callable[[], Awaitable[None]]) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                await pump()

        tasks = [
            asyncio.ensure_future(quietly(upstream)),
            asyncio.ensure_future(quietly(downstream)),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            for w in (cwriter, swriter):
                w.transport.abort()
                self._writers.discard(w)
