#!/usr/bin/env bash
# Builds the molecule test host image localhost/nitro-wallet-testhost:bookworm with debootstrap
# (no registry is reachable: the image is imported from a rootfs), see shared/TEST-HOSTS.md.
# The image is also tagged recipe-<hash of this recipe>; it is rebuilt only when the recipe
# changes (or with --force). Needs root, podman and debootstrap
# (scripts/install-test-host-deps.sh).
set -euo pipefail

IMAGE_REPO=localhost/nitro-wallet-testhost
IMAGE_TAG=bookworm
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# systemd as PID 1, python for Ansible and the venvs, curl and procps for debugging and tests,
# openssh-server for molecule's SSH connection (several times faster than podman exec; it is
# started only by the scenarios' prepare step, on a loopback port of their choosing).
INCLUDE=systemd,systemd-sysv,dbus,python3,python3-venv,iproute2,ca-certificates,curl,procps,openssh-server

force=0
[[ ${1:-} == "--force" ]] && force=1

# Extra CA certificates this machine trusts (e.g. a TLS-inspecting egress proxy in front of
# PyPI): the test hosts must trust them too, or pip cannot reach the package index.
EXTRA_CA_DIR=${EXTRA_CA_DIR:-/usr/local/share/ca-certificates}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
recipe_hash=$( {
    printf '%s\n' "$SUITE" "$INCLUDE"
    sed -n '/^# recipe:begin/,/^# recipe:end/p' "${here}/$(basename "${BASH_SOURCE[0]}")"
    find "${EXTRA_CA_DIR}" -name '*.crt' -type f -print0 2>/dev/null | sort -z | xargs -0r cat
} | sha256sum | cut -c1-16)
hash_tag="recipe-${recipe_hash}"

if [[ $force -eq 0 ]] && podman image exists "${IMAGE_REPO}:${hash_tag}"; then
    podman tag "${IMAGE_REPO}:${hash_tag}" "${IMAGE_REPO}:${IMAGE_TAG}"
    echo "build-testhost-image: ${IMAGE_REPO}:${IMAGE_TAG} is up to date (${hash_tag})"
    exit 0
fi

workdir=$(mktemp -d /var/tmp/nitro-testhost.XXXXXX)
trap 'rm -rf "${workdir}"' EXIT
rootfs="${workdir}/rootfs"

# recipe:begin
debootstrap --variant=minbase --include="${INCLUDE}" "${SUITE}" "${rootfs}" "${MIRROR}" >"${workdir}/debootstrap.log" 2>&1 \
    || { tail -n 30 "${workdir}/debootstrap.log" >&2; exit 1; }
# A container needs no getty, and systemd-networkd/resolved would fight the host network.
# sshd must not take port 22 of the shared host network at boot.
rm -f "${rootfs}"/etc/systemd/system/getty.target.wants/* \
      "${rootfs}"/etc/systemd/system/multi-user.target.wants/systemd-networkd.service \
      "${rootfs}"/etc/systemd/system/multi-user.target.wants/ssh.service \
      "${rootfs}"/etc/systemd/system/sockets.target.wants/ssh.socket
echo "nitro-testhost" >"${rootfs}/etc/hostname"
if compgen -G "${EXTRA_CA_DIR}/*.crt" >/dev/null; then
    cp "${EXTRA_CA_DIR}"/*.crt "${rootfs}/usr/local/share/ca-certificates/"
    chroot "${rootfs}" update-ca-certificates >/dev/null
fi
# Debian's pip (ensurepip) uses its own CA bundle unless told to use the system one.
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"${rootfs}/etc/pip.conf"
rm -rf "${rootfs}"/var/cache/apt/archives/*.deb "${rootfs}"/var/lib/apt/lists/*
# recipe:end

tar -C "${rootfs}" -c . | podman import \
    --change 'CMD ["/sbin/init"]' --change 'STOPSIGNAL=SIGRTMIN+3' \
    - "${IMAGE_REPO}:${hash_tag}" >/dev/null
podman tag "${IMAGE_REPO}:${hash_tag}" "${IMAGE_REPO}:${IMAGE_TAG}"
echo "build-testhost-image: built ${IMAGE_REPO}:${IMAGE_TAG} (${hash_tag})"
