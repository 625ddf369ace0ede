#!/usr/bin/env bash
# `make demo-dev`: start the simulated appliance as plain processes (no root, no podman), then walk through it with curl exactly as a
# user would: create an account, sign an EIP-1559 transaction, and check with
# independent code (eth-account) that the signature recovers to the account.
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
curl -fsS "$RELAY/readyz"; echo
sed -n '/dev stack is up/,/logs/p' "$STATE.log"

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

step "curl -s -X POST $RELAY/v1/accounts"
account=$(curl -fsS -X POST -H 'Content-Type: application/json' -d '{}' "$RELAY/v1/accounts")
echo "$account"
account_id=$($PY -c 'import json,sys; print(json.load(sys.stdin)["account_id"])' <<<"$account")
address=$($PY -c 'import json,sys; print(json.load(sys.stdin)["address"])' <<<"$account")

tx='{"transaction": {"type": "0x2", "chainId": "0xaa36a7", "nonce": "0x0",
  "to": "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed", "value": "0xde0b6b3a7640000",
  "gas": "0x5208", "maxFeePerGas": "0x77359400", "maxPriorityFeePerGas": "0x3b9aca00", "data": "0x"}}'
step "curl -s -X POST $RELAY/v1/accounts/$account_id/sign/transaction -d '$tx'"
signed=$(curl -fsS -X POST -H 'Content-Type: application/json' -d "$tx" \
  "$RELAY/v1/accounts/$account_id/sign/transaction")
echo "$signed"

step "recover the sender with eth-account (independent of the enclave's code)"
$PY - "$signed" "$address" <<'PYEOF'
import json, sys
from eth_account import Account
signed, address = json.loads(sys.argv[1]), sys.argv[2]
sender = Account.recover_transaction(signed["raw_transaction"])
print(f"recovered sender {sender}\naccount address  {address}")
sys.exit(0 if sender == address else 1)
PYEOF

step "curl -s -X POST ... with a float amount (refused: amounts are wei)"
curl -sS -X POST -H 'Content-Type: application/json' \
  -d '{"transaction": {"type": "0x2", "chainId": 1, "value": 1.5}}' \
  "$RELAY/v1/accounts/$account_id/sign/transaction"; echo
echo
echo "demo OK: the key was born in the enclave, only ciphertext is stored ($STATE/relay/accounts.db),"
echo "and KMS released the data key only to the attested PCR0 ($STATE/kms-key-policy.json)."
