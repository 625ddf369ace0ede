"""``make dev``: the whole appliance as plain processes, relay on 127.0.0.1:8080.

Stays in the foreground; Ctrl-C (or SIGTERM) stops everything it started, within
``STOP_BUDGET_SECONDS``. Each process is supervised as systemd supervises its unit on a
host: a dead enclave (or relay, KMS, ...) is started again with backoff, and /readyz
answers 503 while it is down. Every port must be free (pass 0 for any free port): the
stack refuses to start on a taken port, naming it, and accepts readiness only from the
processes it started. State (simulator CA, KMS keys, the release signing certificate,
the relay's SQLite file) lives in ``.dev-state/`` and survives restarts, so accounts
created in one session still sign in the next. The key policy is ``sealed``
(production's default): the image is signed with the dev release certificate and the
policy pins its PCR8, so a changed enclave_app keeps its accounts;
``--key-policy-mode pcr0`` pins the image instead.

Callers authenticate (closed by default, as in production): the stack keeps a bearer
token with every scope in ``.dev-state/api-token``, a stamp key with every scope in
``.dev-state/api-key.pem``, and builds a signing policy that grants both everything into
the image (``nitro_sim.dev_auth``); the relay writes the audit log to
``.dev-state/audit.jsonl``, which verifies against ``.dev-state/sim-root.pem``.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from botocore.exceptions import BotoCoreError, ClientError

from nitro_sim.stack import STOP_BUDGET_SECONDS, LocalStack, StackError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nitro_sim.dev")
    parser.add_argument("--state-dir", type=Path, default=Path(".dev-state"))
    parser.add_argument("--relay-port", type=int, default=8080, help="0: any free port")
    parser.add_argument("--kms-port", type=int, default=4566, help="0: any free port")
    parser.add_argument("--imds-port", type=int, default=1338, help="0: any free port")
    parser.add_argument("--key-policy-mode", choices=("sealed", "pcr0"), default="sealed")
    args = parser.parse_args(argv)
    for name in ("relay_port", "kms_port", "imds_port"):
        if not 0 <= getattr(args, name) < 65536:
            parser.error(f"--{name.replace('_', '-')} must be 0..65535")

    stack = LocalStack(
        root=args.state_dir.resolve(),
        relay_port=args.relay_port,
        kms_port=args.kms_port,
        imds_port=args.imds_port,
        key_policy_mode=args.key_policy_mode,
        on_event=lambda message: print(f"supervisor: {message}", file=sys.stderr, flush=True),
    )
    stopped = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        if stopped.is_set():
            print(
                f"already stopping (at most {STOP_BUDGET_SECONDS:.0f}s)",
                file=sys.stderr,
                flush=True,
            )
            return
        stopped.set()
        stack.interrupt()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    print("starting the simulated appliance ...", flush=True)
    try:
        stack.start()
    except (StackError, BotoCoreError, ClientError, OSError) as exc:
        if stopped.is_set():
            print("interrupted while starting: stopped", file=sys.stderr)
            return 130
        print(f"dev stack failed: {exc}\nlogs: {stack.log_dir}", file=sys.stderr)
        return 1
    if stack.measurements is None or stack.dev_auth is None:  # start() sets both
        return 1
    auth = stack.dev_auth
    state = args.state_dir
    print(
        f"""
nitro-wallet dev stack is up (Ctrl-C to stop)
  relay        {stack.relay_url}   (try: curl -s -X POST {stack.relay_url}/v1/accounts \\
                 -H "Authorization: Bearer $(cat {state / auth.token_path.name})")
  auth         bearer token {state / auth.token_path.name} (identity dev-token) and stamp key
               {state / auth.key_path.name} (id dev-api-key): the dev signing policy grants
               BOTH EVERYTHING (create, sign, read; every account). Never deploy it.
  policy       sha256 {auth.policy_sha256} ({state / auth.policy_file.name})
  audit log    {state / auth.audit_log.name}   (nitro-wallet audit verify \\
                 {state / auth.audit_log.name} --root {state / auth.sim_root.name})
  KMS (sim)    {stack.kms_url}   key {stack.key_arn}
  IMDS (sim)   http://127.0.0.1:{stack.imds_port}
  enclave      CID 16 port 5000 over {stack.sim_dir / "vsock"} (supervised: restarted if it dies)
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
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
