#!/bin/sh
# Enclave boot: bring up loopback (the enclave has no other network), point the KMS
# hostname at it so boto3's TLS connection goes through the in-enclave forwarder to
# the parent's vsock-proxy, then run the app. TLS still terminates at AWS KMS.
set -eu
ip link set lo up 2>/dev/null || true
host=$(python3 -c 'import tomllib; print(tomllib.load(open("/app/enclave.toml","rb"))["kms"]["endpoint_host"])')
echo "127.0.0.1 ${host}" >> /etc/hosts
exec python3 -m enclave_app --config /app/enclave.toml
