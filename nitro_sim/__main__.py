"""``nitro-sim <command>``: one entry point for the simulated Nitro and AWS edges.

    nitro-sim init [--state-dir D]       create the CA and principals.json (idempotent)
    nitro-sim kms ...                    local KMS            (nitro_sim.kms.server)
    nitro-sim imds ...                   IMDSv2               (nitro_sim.imds)
    nitro-sim vsock-proxy ...            vsock-proxy          (nitro_sim.vsock_proxy)
    nitro-sim nitro-cli ...              simulated nitro-cli  (nitro_sim.nitro_cli)

Subcommand modules are imported only when used, so one missing or broken module
does not take the others down.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from typing import cast

from nitro_sim import statedir

COMMANDS = {
    "kms": "nitro_sim.kms.server",
    "imds": "nitro_sim.imds",
    "vsock-proxy": "nitro_sim.vsock_proxy",
    "nitro-cli": "nitro_sim.nitro_cli",
}
USAGE = "usage: nitro-sim {init,kms,imds,vsock-proxy,nitro-cli} [ARGS...]"


def init(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="nitro-sim init")
    parser.add_argument(
        "--state-dir", help=f"default: ${statedir.STATE_DIR_ENV} or {statedir.DEFAULT_STATE_DIR}"
    )
    args = parser.parse_args(argv)
    state = statedir.resolve(args.state_dir)
    try:
        ca_module = importlib.import_module("nitro_sim.ca")
        principals_module = importlib.import_module("nitro_sim.principals")
        state.mkdir(mode=0o700, parents=True, exist_ok=True)
        statedir.vsock_dir(state).mkdir(mode=0o700, exist_ok=True)  # the role opens it to ne
        for sub in (statedir.enclaves_dir(state), state / "kms"):
            statedir.private_dir(sub)
        ca = ca_module.SimCa.load_or_create(statedir.ca_dir(state))
        principals_module.Principals.load_or_create(state)
    except Exception as exc:  # report any failure as one line, no traceback
        print(f"nitro-sim init: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"nitro-sim state in {state} (CA root SHA-256 {ca.root_fingerprint})")
    return 0


def _load(module_name: str) -> Callable[[list[str]], int]:
    module = importlib.import_module(module_name)
    entry = getattr(module, "main", None)
    if not callable(entry):
        raise ImportError(f"{module_name} has no main()")
    return cast(Callable[[list[str]], int], entry)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "init":
        return init(rest)
    module_name = COMMANDS.get(command)
    if module_name is None:
        print(f"nitro-sim: unknown command {command!r}\n{USAGE}", file=sys.stderr)
        return 2
    try:
        entry = _load(module_name)
    except ImportError as exc:
        print(
            f"nitro-sim: the {command!r} command is unavailable: cannot import "
            f"{module_name} ({exc})",
            file=sys.stderr,
        )
        return 2
    return int(entry(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
