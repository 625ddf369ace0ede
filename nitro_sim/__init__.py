"""nitro-sim: the simulated AWS Nitro Enclaves and AWS edges (NSM, nitro-cli, vsock, KMS, IMDS).

Never part of the enclave image; ``enclave_app`` must not import it.
"""
