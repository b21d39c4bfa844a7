"""The server-side Lua scripts, read once from package data and registered once per client.

A line ``--#include NAME.lua`` in a script stands for the text of ``lua/NAME.lua`` (the helpers
that more than one script uses: ``expiry.lua``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib.resources import files

from redis.commands.core import AsyncScript

from .connection import RedisClient

_INCLUDE = re.compile(r"^--#include (\w+)\.lua$", re.MULTILINE)


@cache
def source(name: str) -> str:
    """The text of ``lua/<name>.lua``, its ``--#include`` lines replaced by what they name."""
    text = (files(__package__) / "lua" / f"{name}.lua").read_text(encoding="utf-8")
    return _INCLUDE.sub(lambda m: source(m.group(1)).rstrip("\n"), text)


@dataclass(frozen=True, slots=True)
class Scripts:
    """The scripts registered on one client (EVALSHA, with a SCRIPT LOAD on NOSCRIPT)."""

    open: AsyncScript
    commit: AsyncScript
    release: AsyncScript
    renew: AsyncScript
    purge: AsyncScript
    scan: AsyncScript
    probe: AsyncScript
    dump: AsyncScript
    load: AsyncScript

    @classmethod
    def register(cls, client: RedisClient) -> Scripts:
        return cls(
            open=client.register_script(source("open")),
            commit=client.register_script(source("commit")),
            release=client.register_script(source("release")),
            renew=client.register_script(source("renew")),
            purge=client.register_script(source("purge")),
            scan=client.register_script(source("scan")),
            probe=client.register_script(source("probe")),
            dump=client.register_script(source("dump")),
            load=client.register_script(source("load")),
        )
