#!/usr/bin/env bash
# `make demo-dev`: the simulated appliance as plain processes (no root, no podman),
# then the curl walk-through (scripts/walkthrough.sh) against its relay.
#
# The stack owns its ports: it refuses to start when one is taken (naming it), and the
# walk-through runs only against the relay it started (the URL it prints), never
# against whatever else may hold port 8080.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
STATE=${DEMO_STATE:-.demo-state}   # its own state directory (tests give a temporary one)
LOG=$STATE/dev.log
mkdir -p "$STATE"

$PY -m nitro_sim.dev --state-dir "$STATE" "$@" >"$LOG" 2>&1 &
stack_pid=$!
trap 'kill -TERM $stack_pid 2>/dev/null; wait $stack_pid 2>/dev/null || true' EXIT
for _ in $(seq 1 240); do
  grep -q "dev stack is up" "$LOG" && break
  if ! kill -0 $stack_pid 2>/dev/null; then
    cat "$LOG"
    echo "demo-dev: the dev stack did not start (see above)" >&2
    exit 1
  fi
  sleep 0.5
done
grep -q "dev stack is up" "$LOG" || { cat "$LOG"; echo "demo-dev: no stack after 120s" >&2; exit 1; }
sed -n '/dev stack is up/,/logs/p' "$LOG"
RELAY=$(sed -n 's|^  relay  *\(http://127\.0\.0\.1:[0-9]*\) .*|\1|p' "$LOG" | head -n 1)
[ -n "$RELAY" ] || { echo "demo-dev: no relay URL in $LOG" >&2; exit 1; }

scripts/walkthrough.sh "$RELAY" "$STATE"
echo
echo "demo OK: the key was born in the enclave, only ciphertext is stored ($STATE/relay/accounts.db),"
echo "and KMS released the data key only to the attested PCR0 ($STATE/kms-key-policy.json)."
