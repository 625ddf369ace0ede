"""Ansible filters for the KMS key policy, backed by nitro_wallet.key_policy.

The policy is rendered from templates/kms_key_policy.json.j2 and validated by the same
code that ``make dev`` and operators use (``nitro-wallet key-policy validate``), so the
role cannot drift from the project's rules. The operator package ``nitro_wallet`` must
be installed in the controller's Python (``make venv``, or the nitro-wallet-operator
wheel from ``scripts/build_wheels.py``).

    nitro_wallet_render_key_policy(admin_arns, enclave_arns, pcr0s=[], mode="sealed",
                                   pcr8s=[], break_glass_arns=[])          -> dict
    nitro_wallet_validate_key_policy(policy, allow_debug=False, mode=None) -> dict
        {"valid": true, "mode", "pcr0s", "pcr8s", "measurements", "admin_arns",
         "enclave_arns", "break_glass_arns", "policy_holders", "warnings"}
    nitro_wallet_pcr8(certificate_pem)                                     -> hex str
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any

from ansible.errors import AnsibleFilterError  # type: ignore[import-untyped]


def _module(name: str) -> Any:
    try:
        return importlib.import_module(f"nitro_wallet.{name}")
    except ImportError as exc:
        raise AnsibleFilterError(
            f"cannot import nitro_wallet.{name}: install the operator package in the "
            f"controller's Python (make venv): {exc}"
        ) from exc


def _strings(value: object, what: str) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise AnsibleFilterError(f"{what} must be a list of strings, got {value!r}")
    items = list(value)
    if not all(isinstance(item, str) and item for item in items):
        raise AnsibleFilterError(f"{what} must be a list of non-empty strings, got {items!r}")
    return items


def render_key_policy(
    admin_arns: object,
    enclave_arns: object,
    pcr0s: object = (),
    mode: str = "sealed",
    pcr8s: object = (),
    break_glass_arns: object = (),
) -> dict[str, Any]:
    module = _module("key_policy")
    try:
        policy: dict[str, Any] = module.render_key_policy(
            admin_arns=_strings(admin_arns, "admin_arns"),
            enclave_arns=_strings(enclave_arns, "enclave_arns"),
            mode=mode,
            pcr0s=_strings(pcr0s, "pcr0s"),
            pcr8s=_strings(pcr8s, "pcr8s"),
            break_glass_arns=_strings(break_glass_arns, "break_glass_arns"),
        )
    except module.KeyPolicyError as exc:
        raise AnsibleFilterError(f"cannot render the KMS key policy: {exc}") from exc
    return policy


def validate_key_policy(
    policy: object, allow_debug: bool = False, mode: str | None = None
) -> dict[str, Any]:
    module = _module("key_policy")
    if not isinstance(allow_debug, bool):
        raise AnsibleFilterError(f"allow_debug must be a boolean, got {allow_debug!r}")
    try:
        summary = module.validate_key_policy(policy, allow_debug=allow_debug, mode=mode or None)
    except module.KeyPolicyError as exc:
        raise AnsibleFilterError(
            "the KMS key policy is refused: " + "; ".join(exc.problems)
        ) from exc
    result: dict[str, Any] = summary.to_json()
    return result


def pcr8(certificate: object) -> str:
    module = _module("pcr")
    if not isinstance(certificate, str) or not certificate.strip():
        raise AnsibleFilterError("the release certificate must be a PEM string")
    try:
        value: str = module.pcr8_of_certificate(certificate.encode("ascii"))
    except (module.CertificateError, UnicodeEncodeError) as exc:
        raise AnsibleFilterError(f"cannot measure the release certificate: {exc}") from exc
    return value


class FilterModule:
    def filters(self) -> dict[str, Callable[..., Any]]:
        return {
            "nitro_wallet_render_key_policy": render_key_policy,
            "nitro_wallet_validate_key_policy": validate_key_policy,
            "nitro_wallet_pcr8": pcr8,
        }
