"""``make dev``: the whole appliance as plain processes, relay on 127.0.0.1:8080.

Stays in the foreground; Ctrl-C (or SIGTERM) stops everything it started. State
(simulator CA, KMS keys, the release signing certificate, the relay's SQLite file)
lives in ``.dev-state/`` and survives restarts, so accounts created in one session
still sign in the next. The key policy is ``sealed`` (production's default): the image
is signed with the dev release certificate and the policy pins its PCR8, so a changed
enclave_app keeps its accounts; ``--key-policy-mode pcr0`` pins the image instead.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from botocore.exceptions import BotoCoreError, ClientError

from nitro_sim.stack import LocalStack, StackError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nitro_sim.dev")
    parser.add_argument("--state-dir", type=Path, default=Path(".dev-state"))
    parser.add_argument("--relay-port", type=int, default=8080)
    parser.add_argument("--kms-port", type=int, default=4566)
    parser.add_argument("--imds-port", type=int, default=1338)
    parser.add_argument("--key-policy-mode", choices=("sealed", "pcr0"), default="sealed")
    args = parser.parse_args(argv)

    stack = LocalStack(
        root=args.state_dir.resolve(),
        relay_port=args.relay_port,
        kms_port=args.kms_port,
        imds_port=args.imds_port,
        key_policy_mode=args.key_policy_mode,
    )
    stopped = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        stopped.set()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    print("starting the simulated appliance ...", flush=True)
    try:
        stack.start()
    except (StackError, BotoCoreError, ClientError, OSError) as exc:
        print(f"dev stack failed: {exc}\nlogs: {stack.log_dir}", file=sys.stderr)
        return 1
    if stack.measurements is None:  # start() always measures; keeps mypy honest
        return 1
    print(
        f"""
nitro-wallet dev stack is up (Ctrl-C to stop)
  relay        {stack.relay_url}   (try: curl -s -X POST {stack.relay_url}/v1/accounts)
  KMS (sim)    {stack.kms_url}   key {stack.key_arn}
  IMDS (sim)   http://127.0.0.1:{stack.imds_port}
  enclave      CID 16 port 5000 over {stack.sim_dir / "vsock"}
  PCR0         {stack.measurements.pcr0}
  PCR8         {stack.measurements.pcr8 or "(unsigned image)"}
  key policy   {stack.root / "kms-key-policy.json"} ({stack.key_policy_mode} mode)
  logs         {stack.log_dir}
""",
        flush=True,
    )
    stopped.wait()
    print("stopping ...", flush=True)
    stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
