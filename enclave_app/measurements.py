"""Read PCR0 out of the enclave's own attestation document, for log lines only.

The enclave never verifies its own document (its NSM produced it); this reader only
shows operators which image KMS refused. The full verifier lives in the operator
package (``nitro_wallet.attestation``), outside the enclave image.
"""

from __future__ import annotations

import cbor2

COSE_SIGN1_TAG_BYTE = 0xD2
MAX_DOCUMENT_BYTES = 32 * 1024


def pcr0_hex(document: bytes) -> str | None:
    """PCR0 as lowercase hex, or None when the document cannot be read."""
    if not 0 < len(document) <= MAX_DOCUMENT_BYTES:
        return None
    raw = document[1:] if document[0] == COSE_SIGN1_TAG_BYTE else document
    try:
        outer = cbor2.loads(raw)
        payload = outer[2] if isinstance(outer, list) and len(outer) == 4 else None
        fields = cbor2.loads(payload) if isinstance(payload, bytes) else None
    except (cbor2.CBORError, ValueError, TypeError, OverflowError, RecursionError):
        return None
    pcrs = fields.get("pcrs") if isinstance(fields, dict) else None
    value = pcrs.get(0) if isinstance(pcrs, dict) else None
    return value.hex() if isinstance(value, bytes) else None


def describe_measurements(document: bytes) -> str:
    """``PCR0 <hex>`` for operators reading a KMS denial."""
    pcr0 = pcr0_hex(document)
    return f"PCR0 {pcr0}" if pcr0 is not None else "PCR0 unknown"
