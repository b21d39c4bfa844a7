"""The write buffer of a session: changes kept, already encoded, until the commit."""

from __future__ import annotations

from typing import Any


class WriteBuffer:
    """Sets (encoded bytes) and clears (None) by state key, and whether all was cleared."""

    __slots__ = ("cleared_all", "writes")

    def __init__(self) -> None:
        self.writes: dict[str, bytes | None] = {}
        self.cleared_all = False

    @property
    def dirty(self) -> bool:
        return bool(self.writes) or self.cleared_all

    def put(self, name: str, buf: bytes) -> None:
        self.writes[name] = buf

    def delete(self, name: str) -> None:
        self.writes[name] = None

    def clear_all(self) -> None:
        self.writes.clear()
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
        """commit.lua's tail: the number of deletes, the deleted names, then name, value pairs."""
        deletes = [n for n, v in self.writes.items() if v is None]
        args: list[Any] = [len(deletes), *deletes]
        for name, buf in self.writes.items():
            if buf is not None:
                args += (name, buf)
        return args
