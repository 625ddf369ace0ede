"""Ethereum signing inside the enclave.

Canonical encodings (RLP, transaction types, EIP-191, EIP-712) are implemented
here, small and validated field by field; ECDSA is libsecp256k1 via coincurve and
Keccak-256 is pycryptodome's. No Ethereum helper library is imported.
"""

from enclave_app.signing.keccak import keccak256
from enclave_app.signing.keys import (
    SigningKey,
    generate_private_key,
    is_valid_private_key,
    private_key_to_address,
    recover_address,
    sign_digest,
    to_checksum_address,
)
from enclave_app.signing.transactions import (
    Authorization,
    SignedAuthorization,
    SignedTransaction,
    Transaction,
    parse_authorization,
    parse_transaction,
    require_sender,
    sign_authorization,
    sign_transaction,
)

__all__ = [
    "Authorization",
    "SignedAuthorization",
    "SignedTransaction",
    "SigningKey",
    "Transaction",
    "generate_private_key",
    "is_valid_private_key",
    "keccak256",
    "parse_authorization",
    "parse_transaction",
    "private_key_to_address",
    "recover_address",
    "require_sender",
    "sign_authorization",
    "sign_digest",
    "sign_transaction",
    "to_checksum_address",
]
