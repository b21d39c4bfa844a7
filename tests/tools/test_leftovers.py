"""The session-end check of tests/conftest.py: a run that leaves entries in the temp folders
fails and names them; entries another session still uses do not count."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.support import leftovers

ROOT = Path(__file__).resolve().parents[2]


def test_a_run_that_leaves_a_folder_in_the_temp_folder_fails_and_names_it(tmp_path: Path) -> None:
    marker = tmp_path / "left.txt"
    (tmp_path / "conftest.py").write_text(
        "from tests.conftest import pytest_sessionfinish, pytest_sessionstart  # noqa: F401\n"
    )
    (tmp_path / "test_leaky.py").write_text(
        "import tempfile\n\n\n"
        "def test_leaks() -> None:\n"
        "    path = tempfile.mkdtemp(prefix='rr-leaky-')\n"
        f"    open({str(marker)!r}, 'w').write(path)\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
         str(tmp_path / "test_leaky.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    left = marker.read_text() if marker.exists() else None
    try:
        assert left is not None, done.stdout + done.stderr
        assert done.returncode == 1, done.stdout + done.stderr
        assert "1 passed" in done.stdout
        assert "the test run left 1 entries in the temp folders" in done.stdout
        assert f"\n  {left}\n" in done.stdout
    finally:
        if left is not None:
            shutil.rmtree(left, ignore_errors=True)


def test_an_entry_that_another_process_uses_does_not_count() -> None:
    before = leftovers.snapshot()
    mine = Path(tempfile.mkdtemp(prefix="rr-probe-"))
    theirs = Path(tempfile.mkdtemp(prefix="rr-probe-"))
    # A process that is not a descendant of this one (its parent exits at once), working in
    # ``theirs``, as a server of another test session would.
    started = subprocess.run(
        ["sh", "-c", f"cd {theirs} && sleep 600 >/dev/null 2>&1 & echo $!"],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    pid = int(started.stdout)
    try:
        found = leftovers.new_since(before)  # (other sessions' entries may be there too)
        assert mine in found and theirs not in found, found
    finally:
        os.kill(pid, signal.SIGKILL)
        shutil.rmtree(mine, ignore_errors=True)
        shutil.rmtree(theirs, ignore_errors=True)
    assert not {mine, theirs} & set(leftovers.new_since(before))
