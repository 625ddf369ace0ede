#!/usr/bin/env bash
# Installs what molecule's podman test hosts need on a Debian/Ubuntu machine (CI, developers).
# Needs root. Idempotent.
set -euo pipefail

if [[ ${EUID} -ne 0 ]]; then
    echo "install-test-host-deps: run as root" >&2
    exit 1
fi

packages=(podman runc debootstrap uidmap slirp4netns fuse-overlayfs ca-certificates)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
echo "install-test-host-deps: ok (${packages[*]})"
