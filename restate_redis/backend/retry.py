"""What a transient Redis error is, and the retry policy every round trip runs under.

Retrying is safe for every round trip a session makes: ``open.lua`` is re-entrant for the
same lease token, ``release.lua`` and ``renew.lua`` are idempotent, reads have no effect, and
a commit carries an id that ``commit.lua`` recognises when it was already applied (see
``commit.lua``). Errors that a retry cannot fix (a fencing rejection, a bad value, a script
error) are never retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from redis import exceptions as rex
from tenacity import (
    AsyncRetrying,
    RetryError,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from ..errors import (
    CommitError,
    StateError,
    StoreError,
    StoreUnavailableError,
    WrongTypeError,
)

T = TypeVar("T")
log = logging.getLogger("restate_redis")

# Error replies that mean "not now" rather than "never": a replica during failover, a server
# loading its data, a cluster slot moving or without a master, a blocked call cut short when
# the server changed role.
_TRANSIENT_REPLIES = (
    "READONLY",
    "LOADING",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "MASTERDOWN",
    "NOREPLICAS",
    "UNBLOCKED",
)


def is_transient(exc: BaseException) -> bool:
    """True for errors a later attempt can succeed after (connection, timeout, failover)."""
    if isinstance(exc, rex.AuthenticationError | rex.AuthorizationError):
        return False  # wrong credentials stay wrong
    if isinstance(exc, rex.ConnectionError | rex.TimeoutError | rex.MaxConnectionsError):
        return True  # includes BusyLoadingError and sentinel's MasterNotFoundError
    if isinstance(exc, rex.ClusterDownError | rex.TryAgainError | rex.ReadOnlyError):
        return True
    if isinstance(exc, rex.SlotNotCoveredError):
        return True
    if type(exc) is rex.ClusterError:
        # "TTL exhausted": redirections (MOVED, ASK, TRYAGAIN) did not settle within one call,
        # as while a slot's new owner is announced node by node; none of them ran the command.
        return True
    if isinstance(exc, OSError | asyncio.TimeoutError):
        return True
    if isinstance(exc, rex.ResponseError) and not isinstance(exc, rex.NoScriptError):
        # Errors raised inside a script arrive wrapped ("Error running script ...: -READONLY").
        text = str(exc)
        return any(
            text.startswith(code) or f"-{code}" in text or f" {code} " in text
            for code in _TRANSIENT_REPLIES
        )
    return False


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter, bounded by ``attempts`` and by ``timeout`` seconds."""

    attempts: int = 10
    timeout: float = 15.0
    initial: float = 0.05
    max_wait: float = 1.0

    async def run(self, op: str, where: str, call: Callable[[], Awaitable[T]]) -> T:
        """Await ``call()``; call it again after transient errors until the budget is spent.

        A spent budget raises :class:`StoreUnavailableError`, or :class:`CommitError` for a
        commit (whose outcome is then unknown).
        """
        started = time.monotonic()
        try:  # the first attempt outside tenacity: no overhead while Redis is healthy
            return await call()
        except Exception as exc:
            if self.attempts <= 1 or not is_transient(exc):
                raise
            first = exc
        return await self.after_failure(op, where, call, first, started)

    async def after_failure(
        self,
        op: str,
        where: str,
        call: Callable[[], Awaitable[T]],
        first: BaseException,
        started: float,
    ) -> T:
        """Go on after a first attempt, begun at ``started``, failed with transient ``first``."""
        _log_retry(op, where)(first, 1)
        remaining = self.timeout - (time.monotonic() - started)
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.attempts - 1) | stop_after_delay(max(0.0, remaining)),
            wait=wait_random_exponential(multiplier=self.initial, max=self.max_wait),
            retry=retry_if_exception(is_transient),
            before_sleep=lambda state: _log_retry(op, where)(
                state.outcome.exception() if state.outcome else None, state.attempt_number + 1
            ),
        )

        async def attempt() -> T:  # tenacity awaits only what a coroutine function returns
            return await call()

        try:
            await asyncio.sleep(random.uniform(0, self.initial))
            return await retrying(attempt)
        except RetryError as exc:
            last = exc.last_attempt.exception()
            n = exc.last_attempt.attempt_number + 1
            if op == "commit":
                raise CommitError(
                    f"could not confirm the commit of {where}: Redis kept failing for {n} "
                    f"attempts (retry_attempts={self.attempts}, retry_timeout="
                    f"{self.timeout:g}s); it may or may not have been applied. Last error: {last}"
                ) from last
            raise StoreUnavailableError(
                f"Redis unavailable for {op} on {where} after {n} attempts "
                f"(retry_attempts={self.attempts}, retry_timeout={self.timeout:g}s): {last}"
            ) from last


def _log_retry(op: str, where: str) -> Callable[[BaseException | None, int], None]:
    def log_it(exc: BaseException | None, attempt: int) -> None:
        log.info("retrying %s on %s after attempt %d failed: %r", op, where, attempt, exc)

    return log_it


def as_state_error(exc: BaseException, what: str) -> BaseException:
    """``exc`` as the :class:`StateError` a caller sees; ``what`` names the operation.

    Errors of the library pass unchanged; redis-py's (a ``RedisClusterException`` included,
    which is no ``RedisError``) and socket errors become :class:`StoreUnavailableError` when
    they mean "not reachable" and :class:`StoreError` otherwise. Anything else is returned
    as it is.
    """
    if isinstance(exc, StateError | rex.WatchError):  # a WatchError is its caller's to retry
        return exc
    if isinstance(exc, rex.ResponseError) and "WRONGTYPE" in str(exc):
        return WrongTypeError(f"{what}: a Redis key holds a value of the wrong type: {exc}")
    if isinstance(exc, rex.AuthenticationError | rex.AuthorizationError):
        return StoreError(f"{what}: Redis refused the credentials: {exc}")
    if isinstance(exc, rex.NoPermissionError):
        return StoreError(f"{what}: the Redis user lacks a permission (ACL): {exc}")
    if is_transient(exc) or isinstance(exc, rex.RedisClusterException | rex.ConnectionError):
        return StoreUnavailableError(f"{what}: Redis is not reachable: {exc}")
    if isinstance(exc, rex.RedisError):
        return StoreError(f"{what}: {type(exc).__name__}: {exc}")
    return exc


@contextlib.asynccontextmanager
async def redis_errors(what: str) -> AsyncIterator[None]:
    """Raise whatever Redis raises inside the block as a :class:`StateError` (see above)."""
    try:
        yield
    except Exception as exc:
        translated = as_state_error(exc, what)
        if translated is exc:
            raise
        raise translated from exc
