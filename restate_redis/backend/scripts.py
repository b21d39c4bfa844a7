"""The server-side Lua scripts, read once from package data and registered once per client."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib.resources import files

from redis.commands.core import AsyncScript

from .connection import RedisClient


@cache
def source(name: str) -> str:
    """The text of ``lua/<name>.lua``."""
    return (files(__package__) / "lua" / f"{name}.lua").read_text(encoding="utf-8")


@dataclass(frozen=True, slots=True)
class Scripts:
    """The scripts registered on one client (EVALSHA, with a SCRIPT LOAD on NOSCRIPT)."""

    open: AsyncScript
    commit: AsyncScript
    release: AsyncScript
    renew: AsyncScript
    purge: AsyncScript
    scan: AsyncScript

    @classmethod
    def register(cls, client: RedisClient) -> Scripts:
        return cls(
            open=client.register_script(source("open")),
            commit=client.register_script(source("commit")),
            release=client.register_script(source("release")),
            renew=client.register_script(source("renew")),
            purge=client.register_script(source("purge")),
            scan=client.register_script(source("scan")),
        )
