"""``pom-deploy``: inspect, run and deploy exported PoM graphs.

Every command lives in a module with ``register(commands)``, which adds its subparser (and
sets ``func``); ``COMMAND_MODULES`` lists them, in the order ``--help`` shows them.
"""

from __future__ import annotations

import argparse
import sys

from ..tensorrt import cli as tensorrt_commands
from . import demo_commands, doctor_commands, inspect_commands, native_commands, run_commands, serving_commands
from .common import run_command, version_text

COMMAND_MODULES = (demo_commands, inspect_commands, run_commands, tensorrt_commands, serving_commands, native_commands,
                   doctor_commands)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pom-deploy",
        description="Inspect, run and deploy PoM graphs exported by pom-export.",
        epilog="Start with `pom-deploy demo`: it builds a small model, exports, verifies and runs it.",
    )
    parser.add_argument("--version", action="version", version=version_text("pom-deploy"))
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES:
        module.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
