"""Ansible filters for the KMS key policy, backed by nitro_wallet.key_policy.

The policy is rendered from templates/kms_key_policy.json.j2 and validated by the same
code that ``make dev`` and operators use (``nitro-wallet key-policy validate``), so the
role cannot drift from the project's rules. The operator package ``nitro_wallet`` must
be installed in the controller's Python (``make venv`` installs it).

    nitro_wallet_render_key_policy(admin_arns, enclave_arns, pcr0s) -> dict
    nitro_wallet_validate_key_policy(policy, allow_debug=False)    -> sorted PCR0 list
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ansible.errors import AnsibleFilterError  # type: ignore[import-untyped]


def _key_policy() -> Any:
    try:
        from nitro_wallet import key_policy  # noqa: PLC0415 - a clear error if missing
    except ImportError as exc:
        raise AnsibleFilterError(
            "cannot import nitro_wallet.key_policy: install the operator package in the "
            f"controller's Python (make venv): {exc}"
        ) from exc
    return key_policy


def _strings(value: object, what: str) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise AnsibleFilterError(f"{what} must be a list of strings, got {value!r}")
    items = list(value)
    if not all(isinstance(item, str) and item for item in items):
        raise AnsibleFilterError(f"{what} must be a list of non-empty strings, got {items!r}")
    return items


def render_key_policy(admin_arns: object, enclave_arns: object, pcr0s: object) -> dict[str, Any]:
    module = _key_policy()
    try:
        policy: dict[str, Any] = module.render_key_policy(
            admin_arns=_strings(admin_arns, "admin_arns"),
            enclave_arns=_strings(enclave_arns, "enclave_arns"),
            pcr0s=_strings(pcr0s, "pcr0s"),
        )
    except (module.KeyPolicyError, ValueError) as exc:
        raise AnsibleFilterError(f"cannot render the KMS key policy: {exc}") from exc
    return policy


def validate_key_policy(policy: object, allow_debug: bool = False) -> list[str]:
    module = _key_policy()
    if not isinstance(allow_debug, bool):
        raise AnsibleFilterError(f"allow_debug must be a boolean, got {allow_debug!r}")
    try:
        allowed: list[str] = module.validate_key_policy(policy, allow_debug=allow_debug)
    except module.KeyPolicyError as exc:
        raise AnsibleFilterError(
            "the KMS key policy is refused: " + "; ".join(exc.problems)
        ) from exc
    return allowed


class FilterModule:
    def filters(self) -> dict[str, Callable[..., Any]]:
        return {
            "nitro_wallet_render_key_policy": render_key_policy,
            "nitro_wallet_validate_key_policy": validate_key_policy,
        }
