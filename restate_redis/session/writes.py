"""The write buffer of a session: changes kept, already encoded, until the commit."""

from __future__ import annotations

import math
from typing import Any

from ..durations import seconds
from ..errors import InvalidOptionError

# The longest ttl of a state key: ~2,200 years, far inside the largest field expiry the
# servers take (2**48 ms of Unix time), so the commit's HPEXPIREAT cannot be refused.
MAX_TTL_MS = 2**46


def ttl_ms(ttl: object, what: str) -> int:
    """A state key's ttl (seconds or a timedelta) in whole milliseconds, at least 1."""
    secs = seconds(ttl, f"the ttl of {what}")  # type: ignore[arg-type]
    if secs * 1000 > MAX_TTL_MS:
        raise InvalidOptionError(
            f"the ttl of {what} must be positive and at most {MAX_TTL_MS // 1000:,} seconds, "
            f"got {ttl!r}"
        )
    return max(1, math.ceil(secs * 1000))


class WriteBuffer:
    """Sets (encoded bytes) and clears (None) by state key, whether all was cleared, and the
    ttl (ms) of the keys set with one."""

    __slots__ = ("cleared_all", "ttls", "writes")

    def __init__(self) -> None:
        self.writes: dict[str, bytes | None] = {}
        self.ttls: dict[str, int] = {}
        self.cleared_all = False

    @property
    def dirty(self) -> bool:
        return bool(self.writes) or self.cleared_all

    def put(self, name: str, buf: bytes, ttl_ms: int | None = None) -> None:
        self.writes[name] = buf
        if ttl_ms is not None:
            self.ttls[name] = ttl_ms
        elif self.ttls:
            self.ttls.pop(name, None)

    def delete(self, name: str) -> None:
        self.writes[name] = None
        if self.ttls:
            self.ttls.pop(name, None)

    def clear_all(self) -> None:
        self.writes.clear()
        self.ttls.clear()
        self.cleared_all = True

    def known(self, name: str) -> Any:
        """(True, bytes or None) when this session's writes decide the value, else (False, None)."""
        if name in self.writes:
            return True, self.writes[name]
        if self.cleared_all:
            return True, None
        return False, None

    def applied_to(self, stored: set[str]) -> set[str]:
        """The names ``stored`` becomes once these writes apply."""
        names = set() if self.cleared_all else set(stored)
        for name, buf in self.writes.items():
            if buf is None:
                names.discard(name)
            else:
                names.add(name)
        return names

    def changes(self) -> tuple[int, int]:
        """(state keys set or cleared, encoded bytes set)."""
        return len(self.writes), sum(len(v) for v in self.writes.values() if v is not None)

    def script_args(self) -> list[Any]:
        """commit.lua's tail: the number of deletes, the deleted names, the number of keys set
        with a ttl, their name, ttl ms pairs, then name, value pairs."""
        deletes = [n for n, v in self.writes.items() if v is None]
        args: list[Any] = [len(deletes), *deletes, len(self.ttls)]
        for name, ms in self.ttls.items():
            args += (name, ms)
        for name, buf in self.writes.items():
            if buf is not None:
                args += (name, buf)
        return args
