#!/usr/bin/env bash
# `make demo-dev`: the simulated appliance as plain processes (no root, no podman),
# then the curl walk-through (scripts/walkthrough.sh) against its relay.
# The relay URL is the one this stack reports once it is up: never whatever answers on
# a port (another stack holding 8080 makes this stack fail to start, and the demo with it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
STATE=.demo-state

$PY -m nitro_sim.dev --state-dir "$STATE" "$@" >"$STATE.log" 2>&1 &
stack_pid=$!
trap 'kill -TERM $stack_pid 2>/dev/null; wait $stack_pid 2>/dev/null || true' EXIT
for _ in $(seq 1 180); do
  grep -q "dev stack is up" "$STATE.log" && break
  if ! kill -0 $stack_pid 2>/dev/null; then
    echo "make demo-dev: the dev stack did not start:" >&2
    cat "$STATE.log" >&2
    exit 1
  fi
  sleep 1
done
grep -q "dev stack is up" "$STATE.log" || { cat "$STATE.log" >&2; exit 1; }
RELAY=$(sed -n 's/^ *relay *\(http:\/\/[0-9.:]*\).*/\1/p' "$STATE.log" | head -1)
[ -n "$RELAY" ] || { echo "make demo-dev: no relay URL in $STATE.log" >&2; exit 1; }
sed -n '/dev stack is up/,/logs/p' "$STATE.log"

scripts/walkthrough.sh "$RELAY"
echo
echo "demo OK: the key was born in the enclave, only ciphertext is stored ($STATE/relay/accounts.db),"
echo "and KMS released the data key only to the attested PCR0 ($STATE/kms-key-policy.json)."
