#!/usr/bin/env bash
# `make demo`: the appliance as users run it. Ansible provisions a simulated Nitro host
# (a podman container running systemd, inventory/local) with the production roles and
# playbooks/local_site.yml (site.yml with a release built and trusted on this controller),
# then we walk through it with curl like an operator on the host:
# create an account, sign an EIP-1559 transaction, and check with independent code
# (eth-account) that the signature recovers to the account.
#
# Needs root for podman (the host packages are installed if missing, as CI does).
# Leaves the host running; remove it with: podman rm -f nitro-wallet-local
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
export CONTAINERS_CONF="$PWD/molecule/containers.conf"
RELAY=${RELAY:-http://127.0.0.1:18080}   # inventory/local: parent_relay_listen_port

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

command -v podman >/dev/null || scripts/install-test-host-deps.sh

# The host shares this machine's network: its relay, KMS and IMDS ports must be free,
# or held by the demo host itself (its PID namespace), never by another stack.
own_ports() {  # own_ports [--held]
  local pid
  pid=$(podman inspect -f '{{.State.Pid}}' nitro-wallet-local 2>/dev/null || echo 0)
  for spec in "${RELAY##*:}:relay" 14566:KMS 14567:IMDS; do
    if [ "$pid" -gt 0 ] 2>/dev/null; then
      python -m nitro_sim.ports check "${spec%%:*}" --what "demo ${spec#*:}" \
        --allow-pidns-of "$pid" "$@"
    else
      python -m nitro_sim.ports check "${spec%%:*}" --what "demo ${spec#*:}" "$@"
    fi
  done
}
own_ports

step "ansible-playbook -i inventory/local playbooks/local_host.yml playbooks/local_site.yml"
ansible-playbook -i inventory/local playbooks/local_host.yml playbooks/local_site.yml
own_ports --held   # what answers on $RELAY is the demo host's relay

step "podman exec nitro-wallet-local nitro-cli describe-enclaves"
podman exec nitro-wallet-local nitro-cli describe-enclaves
step "podman exec nitro-wallet-local cat /etc/nitro-wallet/pcrs.json"
podman exec nitro-wallet-local cat /etc/nitro-wallet/pcrs.json; echo
step "cat artifacts/kms-key-policy*.json   (rendered from the pinned PCR0, validated, applied)"
ls artifacts/ 2>/dev/null || true

scripts/walkthrough.sh "$RELAY" build/dev-auth   # the credentials local_site.yml made
echo
echo "demo OK: keys are born in the enclave; the host stores ciphertext only"
echo "(podman exec nitro-wallet-local ls -l /var/lib/nitro-wallet) and KMS releases"
echo "data keys only to the attested PCR0. Remove the host: podman rm -f nitro-wallet-local"
