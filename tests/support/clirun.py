"""Run the real ``restate-redis`` console script in a subprocess, bounded in time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


def console_script() -> str:
    """The ``restate-redis`` script installed next to this interpreter."""
    path = Path(sys.executable).parent / "restate-redis"
    assert path.exists(), f"{path} is missing: pip install -e '.[dev]'"
    return str(path)


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``restate-redis ARGS``; on timeout its whole process group is killed."""
    proc = subprocess.Popen(
        [console_script(), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its workers and server share its process group
        env={**os.environ, "COLUMNS": "200"},
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(
            f"restate-redis {' '.join(args)} ran over {timeout}s:\n{out}\n{err}"
        ) from None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
