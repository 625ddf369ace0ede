"""nitro-wallet enclave application: runs inside the Nitro Enclave (or the simulator).

Everything here is part of the trusted computing base and is measured into PCR0.
"""

__version__ = "0.1.0"
