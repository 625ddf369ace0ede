#!/usr/bin/python
"""Ansible module: apply a key policy to an existing KMS key, and change nothing else."""

from __future__ import annotations

import json
from typing import Any

import botocore.exceptions
from ansible_collections.amazon.aws.plugins.module_utils.modules import (  # type: ignore[import-untyped]
    AnsibleAWSModule,
)

DOCUMENTATION = r"""
module: nitro_wallet_kms_key_policy
short_description: Apply a key policy to an existing, enabled KMS key
description:
  - Puts O(policy) on the key with PutKeyPolicy, only when the applied policy (GetKeyPolicy)
    differs, so a sealed policy that denies kms:PutKeyPolicy to everybody is left alone once it
    is in place.
  - Unlike amazon.aws.kms_key it never enables a disabled key, never cancels a scheduled
    deletion and never touches aliases, tags, grants or rotation; it refuses a key that is not
    Enabled, so an emergency DisableKey or ScheduleKeyDeletion stands.
  - O(bypass_policy_lockout_safety_check) is for the sealed policy, which on purpose leaves no
    principal able to change it again.
options:
  key_id:
    description: Key id or key ARN.
    required: true
    type: str
  policy:
    description: The policy document (JSON).
    required: true
    type: json
  bypass_policy_lockout_safety_check:
    description: Set BypassPolicyLockoutSafetyCheck (a policy nobody can change afterwards).
    type: bool
    default: false
extends_documentation_fragment:
  - amazon.aws.common.modules
  - amazon.aws.region.modules
  - amazon.aws.boto3
"""

RETURN = r"""
key_arn:
  description: ARN of the key.
  returned: always
  type: str
key_state:
  description: State of the key (Enabled when the module succeeds).
  returned: always
  type: str
policy:
  description: The policy applied to the key after the call (when it could be read).
  returned: always
  type: dict
"""


def _error_code(error: Exception) -> str:
    response = getattr(error, "response", None) or {}
    code: str = response.get("Error", {}).get("Code", "")
    return code


def _applied_policy(client: Any, key_arn: str) -> dict[str, Any] | None:
    """The policy on the key, or None when the caller may not read it."""
    try:
        text = client.get_key_policy(KeyId=key_arn, PolicyName="default")["Policy"]
    except botocore.exceptions.ClientError as error:
        if _error_code(error) == "AccessDeniedException":
            return None
        raise
    policy: dict[str, Any] = json.loads(text)
    return policy


def main() -> None:
    module = AnsibleAWSModule(
        argument_spec={
            "key_id": {"type": "str", "required": True},
            "policy": {"type": "json", "required": True},
            "bypass_policy_lockout_safety_check": {"type": "bool", "default": False},
        },
        supports_check_mode=True,
    )
    client = module.client("kms")
    wanted_text: str = module.params["policy"]
    wanted = json.loads(wanted_text)
    try:
        metadata = client.describe_key(KeyId=module.params["key_id"])["KeyMetadata"]
        key_arn: str = metadata["Arn"]
        state: str = metadata["KeyState"]
        if state != "Enabled":
            module.fail_json(
                msg=(
                    f"KMS key {key_arn} is {state}: refusing to touch it. A disabled key or one "
                    "pending deletion is never re-enabled or restored by Ansible; if that was "
                    "a mistake, an administrator enables it (or cancels the deletion) by hand."
                ),
                key_arn=key_arn,
                key_state=state,
            )
        applied = _applied_policy(client, key_arn)
        changed = applied != wanted
        if changed and not module.check_mode:
            client.put_key_policy(
                KeyId=key_arn,
                PolicyName="default",
                Policy=wanted_text,
                BypassPolicyLockoutSafetyCheck=module.params["bypass_policy_lockout_safety_check"],
            )
            applied = _applied_policy(client, key_arn)
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as error:
        module.fail_json_aws(error, msg="cannot apply the KMS key policy")
    module.exit_json(changed=changed, key_arn=key_arn, key_state=state, policy=applied or {})


if __name__ == "__main__":
    main()
