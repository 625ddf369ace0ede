#!/usr/bin/env bash
# `make demo-dev`: the simulated appliance as plain processes (no root, no podman),
# then the curl walk-through (scripts/walkthrough.sh) against its relay.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
RELAY=${RELAY:-http://127.0.0.1:8080}
STATE=.demo-state

$PY -m nitro_sim.dev --state-dir "$STATE" >"$STATE.log" 2>&1 &
stack_pid=$!
trap 'kill -TERM $stack_pid 2>/dev/null; wait $stack_pid 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  curl -fsS "$RELAY/readyz" >/dev/null 2>&1 && break
  kill -0 $stack_pid 2>/dev/null || { cat "$STATE.log"; exit 1; }
  sleep 1
done
sed -n '/dev stack is up/,/logs/p' "$STATE.log"

scripts/walkthrough.sh "$RELAY"
echo
echo "demo OK: the key was born in the enclave, only ciphertext is stored ($STATE/relay/accounts.db),"
echo "and KMS released the data key only to the attested PCR0 ($STATE/kms-key-policy.json)."
