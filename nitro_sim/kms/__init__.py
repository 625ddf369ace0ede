"""Local AWS KMS for the simulator: AWS JSON 1.1 protocol, SigV4, key policies, Recipient.

Start one with `serve_kms(state_dir, host, port)` or `python -m nitro_sim.kms.server`.
"""

from nitro_sim.kms.server import KmsServer, main, serve_kms

__all__ = ["KmsServer", "main", "serve_kms"]
