#!/usr/bin/env bash
# `make demo`: the appliance as users run it. Ansible provisions a simulated Nitro host
# (a podman container running systemd, inventory/local) with the production roles and
# playbooks/site.yml, then we walk through it with curl like an operator on the host:
# create an account, sign an EIP-1559 transaction, and check with independent code
# (eth-account) that the signature recovers to the account.
#
# Needs root for podman (the host packages are installed if missing, as CI does).
# Leaves the host running; remove it with: podman rm -f nitro-wallet-local
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
export CONTAINERS_CONF="$PWD/molecule/containers.conf"
PY=.venv/bin/python
RELAY=${RELAY:-http://127.0.0.1:18080}   # inventory/local: parent_relay_listen_port

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

command -v podman >/dev/null || scripts/install-test-host-deps.sh

step "ansible-playbook -i inventory/local playbooks/local_host.yml playbooks/site.yml"
ansible-playbook -i inventory/local playbooks/local_host.yml playbooks/site.yml

step "podman exec nitro-wallet-local nitro-cli describe-enclaves"
podman exec nitro-wallet-local nitro-cli describe-enclaves
step "podman exec nitro-wallet-local cat /etc/nitro-wallet/pcrs.json"
podman exec nitro-wallet-local cat /etc/nitro-wallet/pcrs.json; echo
step "cat artifacts/kms-key-policy*.json   (rendered from the gathered PCR0, validated, applied)"
ls artifacts/ 2>/dev/null || true

step "curl -s $RELAY/readyz"
curl -fsS "$RELAY/readyz"; echo

step "curl -s -X POST $RELAY/v1/accounts"
account=$(curl -fsS -X POST -H 'Content-Type: application/json' -d '{}' "$RELAY/v1/accounts")
echo "$account"
account_id=$($PY -c 'import json,sys; print(json.load(sys.stdin)["account_id"])' <<<"$account")
address=$($PY -c 'import json,sys; print(json.load(sys.stdin)["address"])' <<<"$account")

tx='{"transaction": {"type": "0x2", "chainId": "0xaa36a7", "nonce": "0x0",
  "to": "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed", "value": "0xde0b6b3a7640000",
  "gas": "0x5208", "maxFeePerGas": "0x77359400", "maxPriorityFeePerGas": "0x3b9aca00", "data": "0x"}}'
step "curl -s -X POST $RELAY/v1/accounts/$account_id/sign/transaction -d '<EIP-1559 tx>'"
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

step "curl ... JSON-RPC personal_sign through the same port"
curl -fsS -X POST -H 'Content-Type: application/json' \
  -d "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"personal_sign\",\"params\":[\"0x68656c6c6f\",\"$address\"]}" \
  "$RELAY/"; echo

echo
echo "demo OK: keys are born in the enclave; the host stores ciphertext only"
echo "(podman exec nitro-wallet-local ls -l /var/lib/nitro-wallet) and KMS releases"
echo "data keys only to the attested PCR0. Remove the host: podman rm -f nitro-wallet-local"
