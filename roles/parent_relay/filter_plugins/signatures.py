"""Ansible filter: who signed a message (EIP-191 personal_sign), recovered on the controller.

The upgrade's canary and probe signatures come back from a relay on a host the controller
does not trust; the controller recovers the signer with eth-account (an independent
implementation) and compares it with the account's address.

    signature | nitro_wallet_message_signer(message) -> checksummed address
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ansible.errors import AnsibleFilterError  # type: ignore[import-untyped]


def message_signer(signature: object, message: object) -> str:
    try:
        from eth_account import Account  # noqa: PLC0415 - a clear error if missing
        from eth_account.messages import encode_defunct  # noqa: PLC0415
    except ImportError as exc:
        raise AnsibleFilterError(
            f"cannot import eth_account on the controller (make venv installs it): {exc}"
        ) from exc
    if not isinstance(signature, str) or not isinstance(message, str):
        raise AnsibleFilterError("signature and message must be strings")
    if message.startswith("0x"):
        raise AnsibleFilterError("give the message as text, not 0x-hex")
    try:
        signer: str = Account.recover_message(encode_defunct(text=message), signature=signature)
    except Exception as exc:  # eth-account raises several types for a malformed signature
        raise AnsibleFilterError(f"not a valid signature of the message: {exc}") from exc
    return signer


class FilterModule:
    def filters(self) -> dict[str, Callable[..., Any]]:
        return {"nitro_wallet_message_signer": message_signer}
