#!/usr/bin/env bash
# The curl walk-through both demos end with, against the relay at $1:
# create an account, sign an EIP-1559 transaction, recover the sender with
# independent code (eth-account), sign a message over JSON-RPC, show that a float
# amount and a call without credentials are refused, and (with a stamp key) end with a
# stamped signature verified with eth-account.
#
# Credentials: $2 is a directory holding api-token (a bearer token with every scope)
# and, optionally, api-key.pem (a stamp key the signing policy grants sign); without
# $2, the token comes from $NITRO_WALLET_TOKEN.
set -euo pipefail
cd "$(dirname "$0")/.."
RELAY=$1
CREDS=${2:-}
PY=.venv/bin/python
if [ -n "$CREDS" ]; then
  TOKEN=$(cat "$CREDS/api-token")
else
  TOKEN=${NITRO_WALLET_TOKEN:?walkthrough: give a credentials directory or NITRO_WALLET_TOKEN}
fi
AUTH="Authorization: Bearer $TOKEN"

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

step "curl -s $RELAY/readyz"
curl -fsS "$RELAY/readyz"; echo

step "curl -s -X POST $RELAY/v1/accounts   (no credentials: refused)"
curl -sS -X POST -H 'Content-Type: application/json' -d '{}' "$RELAY/v1/accounts"; echo

step "curl -s -X POST $RELAY/v1/accounts -H 'Authorization: Bearer ...'"
account=$(curl -fsS -X POST -H "$AUTH" -H 'Content-Type: application/json' -d '{}' "$RELAY/v1/accounts")
echo "$account"
account_id=$($PY -c 'import json,sys; print(json.load(sys.stdin)["account_id"])' <<<"$account")
address=$($PY -c 'import json,sys; print(json.load(sys.stdin)["address"])' <<<"$account")

tx='{"transaction": {"type": "0x2", "chainId": "0xaa36a7", "nonce": "0x0",
  "to": "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed", "value": "0xde0b6b3a7640000",
  "gas": "0x5208", "maxFeePerGas": "0x77359400", "maxPriorityFeePerGas": "0x3b9aca00", "data": "0x"}}'
step "curl -s -X POST $RELAY/v1/accounts/$account_id/sign/transaction -d '<EIP-1559 tx>'"
signed=$(curl -fsS -X POST -H "$AUTH" -H 'Content-Type: application/json' -d "$tx" \
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

step "curl ... JSON-RPC personal_sign on the same port"
curl -fsS -X POST -H "$AUTH" -H 'Content-Type: application/json' \
  -d "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"personal_sign\",\"params\":[\"0x68656c6c6f\",\"$address\"]}" \
  "$RELAY/"; echo

step "curl ... with a float amount (refused: amounts are wei)"
curl -sS -X POST -H "$AUTH" -H 'Content-Type: application/json' \
  -d '{"transaction": {"type": "0x2", "chainId": 1, "value": 1.5}}' \
  "$RELAY/v1/accounts/$account_id/sign/transaction"; echo

if [ -n "$CREDS" ] && [ -f "$CREDS/api-key.pem" ]; then
  body=$(mktemp)
  trap 'rm -f "$body"' EXIT
  printf '%s' '{"message": "stamped by the walk-through"}' >"$body"
  path="/v1/accounts/$account_id/sign/message"
  step "curl -s -X POST $RELAY$path -H \"X-Stamp: \$(nitro-wallet stamp --key $CREDS/api-key.pem ...)\""
  stamp=$(.venv/bin/nitro-wallet stamp --key "$CREDS/api-key.pem" --method POST --path "$path" --body "$body")
  stamped=$(curl -fsS -X POST -H "X-Stamp: $stamp" -H 'Content-Type: application/json' \
    --data-binary @"$body" "$RELAY$path")
  echo "$stamped"
  step "recover the stamped message's signer with eth-account"
  $PY - "$stamped" "$address" <<'PYEOF'
import json, sys
from eth_account import Account
from eth_account.messages import encode_defunct
signed, address = json.loads(sys.argv[1]), sys.argv[2]
message = encode_defunct(text="stamped by the walk-through")
signer = Account.recover_message(message, signature=signed["signature"])
print(f"recovered signer {signer}\naccount address  {address}")
sys.exit(0 if signer == address else 1)
PYEOF
fi
