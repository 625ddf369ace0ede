"""Caller authentication, approvals, audit receipts and key entropy, inside the enclave.

- ``canonical``: the canonical request digest and the ``X-Stamp`` / ``X-Approvals``
  encodings (a protocol module: the relay and the operator CLI use it too);
- ``signatures``: Ed25519 and P-256 verification of stamps and approvals (protocol);
- ``replay``: the bounded memory that refuses a stamp or approval seen before (protocol);
- ``stamps``: stamp verification (key, freshness, signature, replay);
- ``intents``: what a stamped HTTP request asks for, and the check that an op matches it;
- ``approvals``: N-of-M approver signatures over the request digest;
- ``authenticate``: the one entry point the signing ops call;
- ``receipt_format`` (protocol) and ``receipts``: the enclave-signed, chained audit log;
- ``entropy``: OS CSPRNG mixed with the NSM's random source.
"""
