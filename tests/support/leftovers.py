"""What the test suite must not leave behind in the system's temporary folders.

Only names the suite and what it starts are known to create are looked at (its servers'
folders, the demo's, restate-server's invoker spill folders), and only those that appeared
during the session: other users' files do not count. Several test sessions may share a
machine, so an entry that a process outside this session is still using (as its working
directory or an open file) belongs to that other session and does not count either.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

PATTERNS = ("invoker-*", "rr-*", "restate-redis-*")


def folders() -> list[Path]:
    """The system temp folder, and /dev/shm where the Restate tests keep their data."""
    found = [Path(tempfile.gettempdir())]
    if Path("/dev/shm").is_dir():
        found.append(Path("/dev/shm"))
    return found


def snapshot() -> set[Path]:
    return {entry for folder in folders() for p in PATTERNS for entry in folder.glob(p)}


def _parents() -> dict[int, int]:
    """pid -> parent pid of every visible process (Linux /proc; empty elsewhere)."""
    parents: dict[int, int] = {}
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc"):
            if name.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    stat = Path(f"/proc/{name}/stat").read_text()
                    parents[int(name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return parents


def _ours(parents: dict[int, int]) -> set[int]:
    """This process and its descendants."""
    ours = {os.getpid()}
    grew = True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in ours} - ours
        ours |= more
        grew = bool(more)
    return ours


def _used_paths(pid: int) -> list[str]:
    paths = []
    with contextlib.suppress(OSError):
        paths.append(os.readlink(f"/proc/{pid}/cwd"))
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                paths.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return paths


def used_by_others(entries: set[Path]) -> set[Path]:
    """The entries that a running process other than this one and its descendants uses."""
    if not entries:
        return set()
    parents = _parents()
    ours = _ours(parents)
    used: set[Path] = set()
    for pid in parents.keys() - ours:
        for path in _used_paths(pid):
            used |= {e for e in entries if path == str(e) or path.startswith(f"{e}{os.sep}")}
    return used


def new_since(before: set[Path]) -> list[Path]:
    """Entries that appeared since ``before`` and remain, except those of other sessions."""
    new = snapshot() - before
    return sorted(new - used_by_others(new))
