"""nitro-wallet parent relay: HTTP API, ciphertext storage, IMDSv2 credentials, enclave client.

The parent is untrusted for key material: this package only ever holds ciphertext,
and it never logs request bodies, credentials or key material.
"""

__version__ = "0.1.0"
