"""Real keys and small registries for the auth, approval and audit tests."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from enclave_app.auth.signatures import PrivateKey, PublicKey
from nitro_wallet.stamping import KeyFile


@dataclass(frozen=True)
class Entry:
    """A registry entry as the policy (H5a) provides it: public key and scopes."""

    public_key: PublicKey
    scopes: frozenset[str] = frozenset({"create", "sign", "read"})


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def new_key(algorithm: str) -> PrivateKey:
    if algorithm == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return ec.generate_private_key(ec.SECP256R1())


def key_file(key_id: str, algorithm: str = "ed25519", kind: str = "api") -> KeyFile:
    return KeyFile(key_id, kind, new_key(algorithm))


def entry(key: KeyFile, scopes: frozenset[str] | None = None) -> Entry:
    if scopes is None:
        return Entry(key.private_key.public_key())
    return Entry(key.private_key.public_key(), scopes)
