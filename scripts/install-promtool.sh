#!/usr/bin/env bash
# promtool (checks and unit-tests monitoring/alerts.yml) from Debian's prometheus package,
# without the server: the package is downloaded, only /usr/bin/promtool is extracted and
# installed to ${PREFIX:-/usr/local}/bin. No service, user or dependency is installed.
set -euo pipefail
if command -v promtool >/dev/null; then
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chmod 0755 "$work"
(cd "$work" && apt-get download -qq prometheus >/dev/null 2>&1)
dpkg-deb --fsys-tarfile "$work"/prometheus_*.deb | tar -x -C "$work" ./usr/bin/promtool
install -m 0755 "$work/usr/bin/promtool" "${PREFIX:-/usr/local}/bin/promtool"
promtool --version | head -1
