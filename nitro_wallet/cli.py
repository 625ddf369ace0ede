"""``nitro-wallet``: the operator CLI, one subcommand group per module in ``commands/``.

Each command module exposes ``register(subparsers)``, which adds its parser and sets
``handler`` (a function of the parsed arguments returning the exit code). Exit codes:
0 success, 1 the checked thing is invalid or the operation failed, 2 usage errors.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from nitro_wallet.commands import (
    attestation,
    audit,
    backup,
    key_policy,
    keygen,
    policy,
    stamp,
    token,
)

COMMANDS = (attestation, audit, key_policy, keygen, policy, stamp, token, backup)


class Parser(argparse.ArgumentParser):
    """argparse that exits with 2 and a one-line message on a usage error."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="nitro-wallet", description=__doc__.split("\n", 1)[0])
    groups = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for command in COMMANDS:
        command.register(groups)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
