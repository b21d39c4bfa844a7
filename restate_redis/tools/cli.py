"""The ``restate-redis`` console script: a thin front end; each command lives in its module."""

from __future__ import annotations

import importlib
import sys
from typing import Any

try:
    import click
except ImportError:  # pragma: no cover - depends on the installed extras
    click = None  # type: ignore[assignment]

# command name -> "module:attribute" of a click command, imported only when it runs
COMMANDS: dict[str, str] = {
    "kv": "restate_redis.tools.kv:kv",
    "services": "restate_redis.tools.kv:services",
    "rekey": "restate_redis.tools.rekey:rekey_command",
    "du": "restate_redis.tools.du:du_command",
    "export": "restate_redis.tools.exchange:export_command",
    "import": "restate_redis.tools.exchange:import_command",
    "ui": "restate_redis.tools.ui:ui_command",
    "demo": "restate_redis.tools.demo.command:demo_command",
    "bench": "restate_redis.tools.bench.command:bench_command",
}

if click is not None:

    class LazyGroup(click.Group):
        """A group whose subcommands are imported on first use, so ``--help`` stays fast."""

        def list_commands(self, ctx: click.Context) -> list[str]:
            return sorted(COMMANDS)

        def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
            target = COMMANDS.get(cmd_name)
            if target is None:
                return None
            module, _, attr = target.partition(":")
            command: click.Command = getattr(importlib.import_module(module), attr)
            return command

    @click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
    @click.version_option(package_name="restate-redis")
    def cli() -> None:
        """Inspect and edit restate-redis state, run the demo and the benchmark."""


def main(argv: Any = None) -> None:
    if click is None:
        sys.stderr.write(
            "restate-redis: the command line needs extra packages: "
            "pip install 'restate-redis[cli]'\n"
        )
        raise SystemExit(2)
    cli.main(args=argv, prog_name="restate-redis")


if __name__ == "__main__":
    main()
