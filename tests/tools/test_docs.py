"""Every ```python block of README.md and of the documentation site runs as written.

Each block runs as a script of its own (a fresh interpreter, its own imports), twice, with
``RESTATE_REDIS_URL`` pointing at a server the test started: so an example that drifts from the
code, or that works only once, fails here. A block that cannot run on its own says so with an
HTML comment on the line before its fence, ``<!-- not run: REASON -->``; those are counted.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from tests.support.servers import Server, running_server

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"

# The pages whose examples a user copies first: each must have its blocks run.
REQUIRED = [
    "README.md",
    "docs/guide/api.md",
    "docs/guide/values.md",
    "docs/guide/errors.md",
    "docs/guide/codecs.md",
    "docs/restate.md",
]
MAX_NOT_RUN = 3

NOT_RUN = re.compile(r"<!--\s*not run:\s*(?P<reason>.*?)\s*-->")
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>```+|~~~+)\s*(?P<info>[^\s`]*)")

# A block may use top-level await: it then runs as one coroutine under asyncio.run. It runs
# as the module __main__ so that dataclasses and type hints defined in it resolve as in a file.
RUNNER = """
import ast, asyncio, inspect, sys, types
source = sys.stdin.read()
code = compile(source, sys.argv[1], "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
module = types.ModuleType("__main__")
sys.modules["__main__"] = module
if code.co_flags & inspect.CO_COROUTINE:
    asyncio.run(eval(code, module.__dict__))
else:
    exec(code, module.__dict__)
"""


@dataclass(frozen=True)
class Block:
    path: str  # relative to the checkout
    line: int  # of the opening fence, 1-based
    language: str
    source: str
    not_run: str | None  # the reason given by a <!-- not run: ... --> marker

    @property
    def name(self) -> str:
        return f"{self.path}:{self.line}"


def blocks_of(text: str, path: str) -> list[Block]:
    """The fenced code blocks of one Markdown text, with the marker before each, if any."""
    found: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, indent = m["fence"], len(m["indent"])
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i][indent:] if lines[i][:indent].isspace() else lines[i])
            i += 1
        if i == len(lines):
            raise AssertionError(f"{path}:{start + 1}: a code block that is never closed")
        i += 1
        previous = next((line for line in reversed(lines[:start]) if line.strip()), "")
        marker = NOT_RUN.search(previous)
        found.append(
            Block(
                path,
                start + 1,
                m["info"].lower(),
                "\n".join(body) + "\n",
                marker["reason"] if marker else None,
            )
        )
    return found


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def all_blocks() -> list[Block]:
    return [
        block
        for file in markdown_files()
        for block in blocks_of(file.read_text(), str(file.relative_to(ROOT)))
    ]


PYTHON = [b for b in all_blocks() if b.language in ("python", "py")]
TO_RUN = [b for b in PYTHON if b.not_run is None]


def run_block(source: str, url: str, name: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RESTATE_REDIS_URL": url, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", RUNNER, name],
        input=source,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_runs(source: str, url: str, name: str) -> str:
    done = run_block(source, url, name)
    assert done.returncode == 0, (
        f"{name} failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}"
    )
    return done.stdout


@pytest.fixture(scope="module")
def docs_server() -> Iterator[Server]:
    with running_server("valkey") as srv:
        yield srv


@pytest.mark.parametrize("block", TO_RUN, ids=[b.name for b in TO_RUN])
def test_python_block_runs_twice(block: Block, docs_server: Server) -> None:
    with redis.Redis(port=docs_server.port) as r:
        r.flushall()
    first = assert_runs(block.source, docs_server.url, block.name)
    again = assert_runs(block.source, docs_server.url, block.name + " (second run)")
    assert "Traceback" not in first + again
    with redis.Redis(port=docs_server.port) as r:
        # every example that opens a session leaves its state where the docs say it goes:
        # under the default namespace, nothing else in the database
        keys = [k.decode() for k in r.scan_iter()]
    assert all(k.startswith("restate:") for k in keys), keys


def test_every_page_users_copy_from_has_its_blocks_run() -> None:
    run_from = {b.path for b in TO_RUN}
    assert [p for p in REQUIRED if p not in run_from] == []
    assert len(TO_RUN) >= len(REQUIRED)


def test_blocks_not_run_are_few_and_say_why() -> None:
    skipped = [b for b in PYTHON if b.not_run is not None]
    assert len(skipped) <= MAX_NOT_RUN, [b.name for b in skipped]
    assert [b.name for b in skipped if not b.not_run] == []
    listed = "; ".join(f"{b.name} ({b.not_run})" for b in skipped)
    print(f"\n{len(skipped)} python blocks not run: {listed}")


def test_a_block_that_raises_fails_the_test(docs_server: Server) -> None:
    with pytest.raises(AssertionError, match="boom"):
        assert_runs("raise RuntimeError('boom')\n", docs_server.url, "raising")
    with pytest.raises(AssertionError, match="boom"):
        assert_runs(
            "import asyncio\nawait asyncio.sleep(0)\nraise RuntimeError('boom')\n",
            docs_server.url,
            "raising after an await",
        )
    assert assert_runs("await __import__('asyncio').sleep(0)\nprint('ok')\n", "", "await") == "ok\n"


def test_the_not_run_marker_is_read_from_the_line_before_the_fence() -> None:
    text = (
        "Text.\n\n<!-- not run: needs a Restate server -->\n```python\nimport restate\n```\n\n"
        "```python\nprint(1)\n```\n```bash\nls\n```\n"
    )
    found = blocks_of(text, "page.md")
    assert [(b.line, b.language, b.not_run) for b in found] == [
        (4, "python", "needs a Restate server"),
        (8, "python", None),
        (11, "bash", None),
    ]
    assert found[0].source == "import restate\n"


def test_shell_commands_are_in_bash_blocks_not_python() -> None:
    """A python block holding shell commands would fail obscurely; name it instead."""
    shell = re.compile(r"^\s*(pip|restate-redis|curl|export|python -m|npm|docker)\b", re.M)
    assert [b.name for b in PYTHON if shell.search(b.source)] == []


def test_readme_links_point_at_files_of_the_checkout() -> None:
    """The README is read outside the site (on a forge, in a wheel's metadata), so its
    relative links go to Markdown files of the checkout; the strict site build checks the
    links between pages."""
    readme = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    relative = [t for t in targets if "://" not in t]
    assert relative, "the README links to the documentation pages"
    assert [t for t in relative if not (ROOT / t).is_file()] == []
    assert len(readme.encode()) <= 8 * 1024
