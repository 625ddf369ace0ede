"""EIP-191 version 0x45 messages (``personal_sign`` and ``eth_sign``).

Digest: keccak256(b"\\x19Ethereum Signed Message:\\n" + str(len(message)) + message),
where ``message`` is bytes and its length is the decimal byte count.

How a JSON string becomes those bytes (the rule clients code against):
- a string that starts with ``0x`` is hex: it must have an even number of hex digits
  (``"0x"`` is the empty message) and is decoded to bytes; an invalid hex string is
  refused rather than silently signed as text;
- any other string is text and is signed as its UTF-8 encoding.
To sign text that itself starts with "0x", send its UTF-8 bytes hex-encoded.
Python callers may pass ``bytes`` directly.

The signature is 65 bytes ``r || s || v`` with ``v`` 27 or 28 (what personal_sign
and eth_sign return).
"""

from __future__ import annotations

from dataclasses import dataclass

from enclave_app.errors import invalid
from enclave_app.signing import fields
from enclave_app.signing.keccak import keccak256
from enclave_app.signing.keys import SigningKey, sign_digest

PREFIX = b"\x19Ethereum Signed Message:\n"


@dataclass(frozen=True)
class SignedMessage:
    digest: bytes
    signature: bytes
    """65 bytes: r (32) || s (32) || v (1, 27 or 28)."""
    v: int
    r: int
    s: int


def message_bytes(message: object) -> bytes:
    """Apply the module's rule to turn a message parameter into bytes."""
    if isinstance(message, bytes):
        return message
    if not isinstance(message, str):
        raise invalid("message must be a string (0x-hex bytes or UTF-8 text)")
    if message.startswith("0x"):
        return fields.hex_bytes("message", message)
    try:
        return message.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates from a JSON \ud800 escape
        raise invalid("message text is not valid Unicode") from exc


def eip191_digest(message: bytes) -> bytes:
    """The personal-message digest of raw message bytes."""
    return keccak256(PREFIX + str(len(message)).encode("ascii") + message)


def signature_bytes(y_parity: int, r: int, s: int) -> bytes:
    """r || s || v with v = 27 + y_parity."""
    return r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes([27 + y_parity])


def sign_digest_65(private_key: bytes | SigningKey, digest: bytes) -> SignedMessage:
    """Sign a 32-byte digest and return it in the 65-byte r||s||v form."""
    y_parity, r, s = sign_digest(private_key, digest)
    return SignedMessage(
        digest=digest, signature=signature_bytes(y_parity, r, s), v=27 + y_parity, r=r, s=s
    )


def sign_message(private_key: bytes | SigningKey, message: object) -> SignedMessage:
    """personal_sign / eth_sign over ``message`` (see the module rule)."""
    return sign_digest_65(private_key, eip191_digest(message_bytes(message)))
