"""The Restate stack of the tests: :mod:`restate_redis.tools.stack`'s, run from the
checkout (so that ``tests.support.restate_app:app`` imports), with what is missing on the
machine a failure in CI and a skip elsewhere."""

from __future__ import annotations

from pathlib import Path

from restate_redis.tools import stack
from restate_redis.tools.stack import RestateStack

from .servers import unavailable

__all__ = ["RestateStack", "restate_binaries", "start_stack"]

ROOT = Path(__file__).resolve().parents[2]


def restate_binaries() -> tuple[Path, Path]:
    """(restate-server, restate) native binaries, installed with npm if missing."""
    try:
        return stack.restate_binaries()
    except stack.Unavailable as exc:
        unavailable(str(exc), note="skipping the Restate tests")


def start_stack(
    app: str,
    env: dict[str, str],
    hypercorn_args: tuple[str, ...] = (),
    server_env: dict[str, str] | None = None,
) -> RestateStack:
    """restate-server and ``hypercorn app`` (run in the checkout), the deployment registered;
    ``env`` is the deployment's extra environment, ``server_env`` the server's."""
    restate_binaries()
    return stack.start_stack(app, env, hypercorn_args, server_env, cwd=ROOT)
