"""KMS operations: key management, cryptography, key policy checks, Recipient, audit.

Independent of HTTP: `KmsService.call(principal, op, params)` returns the response
object or raises KmsError. The HTTP layer (server.py) authenticates and frames.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from nitro_sim.kms import policy as pol
from nitro_sim.kms.admin_ops import AdminOps, parse_tags
from nitro_sim.kms.cms_builder import RecipientKeyError, build_enveloped_data, load_recipient_key
from nitro_sim.kms.multi_region import MultiRegionOps, multi_region_metadata
from nitro_sim.kms.params import KmsError, Params, encode_blob, validation
from nitro_sim.kms.store import (
    ALIAS_RE,
    DISABLED,
    ENABLED,
    PENDING_DELETION,
    PENDING_REPLICA_DELETION,
    PENDING_STATES,
    BlobError,
    KeyRecord,
    RegionalStores,
    blob_key_id,
    open_blob,
    seal,
)
from nitro_sim.principals import Principal, Principals
from nitro_wallet.attestation import AttestationError, verify_attestation

SYMMETRIC_DEFAULT = "SYMMETRIC_DEFAULT"
RSAES_OAEP_SHA_256 = "RSAES_OAEP_SHA_256"
MAX_PLAINTEXT = 4096
MAX_CIPHERTEXT = 6144
MAX_ATTESTATION_DOCUMENT = 64 * 1024
DATA_KEY_BYTES = {"AES_256": 32, "AES_128": 16}


@dataclass
class AuditEntry:
    """One line of audit.log. Holds identifiers and decisions only, never secrets."""

    op: str
    principal: str | None = None
    key_arn: str | None = None
    decision: str = "error"
    error: str | None = None
    recipient: bool = False
    recipient_pcr0: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "op": self.op,
            "principal": self.principal,
            "key_arn": self.key_arn,
            "decision": self.decision,
            "error": self.error,
            "recipient": self.recipient,
            "recipient_pcr0": self.recipient_pcr0,
            **self.extra,
        }


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def append(self, entry: AuditEntry) -> None:
        line = json.dumps(entry.to_json(), sort_keys=True).encode("utf-8") + b"\n"
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)


@dataclass(frozen=True)
class Attested:
    """A verified Recipient: the attested PCRs and the enclave's RSA public key."""

    pcrs: Mapping[int, bytes]
    public_key: rsa.RSAPublicKey


def _access_denied(principal: Principal, action: str, resource: str, why: str) -> KmsError:
    return KmsError(
        "AccessDeniedException",
        f"User: {principal.arn} is not authorized to perform: {action} on resource: "
        f"{resource} because {why}",
    )


Handler = Callable[[Principal, Params, AuditEntry], dict[str, Any]]


class KmsService:
    """KMS of one region (one endpoint); ``stores`` reaches the other regions' keys."""

    def __init__(
        self,
        state_dir: Path,
        principals: Principals,
        trusted_roots: list[str],
        region: str | None = None,
        stores: RegionalStores | None = None,
    ) -> None:
        self.principals = principals
        self.trusted_roots = list(trusted_roots)
        self.region = region or principals.region
        self.stores = stores or RegionalStores(
            Path(state_dir) / "kms", principals.account_id, principals.region
        )
        self.store = self.stores.store(self.region)
        self.audit = AuditLog(self.store.directory / "audit.log")
        self._ops: dict[str, Handler] = {
            "CreateKey": self._create_key,
            "DescribeKey": self._describe_key,
            "ListKeys": self._list_keys,
            "CreateAlias": self._create_alias,
            "ListAliases": self._list_aliases,
            "PutKeyPolicy": self._put_key_policy,
            "GetKeyPolicy": self._get_key_policy,
            "EnableKey": self._enable_key,
            "DisableKey": self._disable_key,
            "ScheduleKeyDeletion": self._schedule_key_deletion,
            "CancelKeyDeletion": self._cancel_key_deletion,
            "Encrypt": self._encrypt,
            "Decrypt": self._decrypt,
            "GenerateDataKey": self._generate_data_key,
            "GenerateDataKeyWithoutPlaintext": self._generate_data_key_without_plaintext,
            "GenerateRandom": self._generate_random,
            **AdminOps(self).handlers(),
            **MultiRegionOps(self).handlers(),
        }

    @property
    def operations(self) -> frozenset[str]:
        return frozenset(self._ops)

    def call(
        self, principal: Principal, op: str, params: Params, entry: AuditEntry
    ) -> dict[str, Any]:
        """Run `op` for `principal`. Fills `entry` (the caller appends it to the audit log)."""
        entry.principal = principal.arn
        handler = self._ops.get(op)
        if handler is None:
            raise KmsError("UnknownOperationException", f"Operation {op} is not supported")
        result = handler(principal, params, entry)
        entry.decision = "allow"
        return result

    # ------------------------------------------------------------------ helpers

    def _resolve(self, key_ref: str, entry: AuditEntry) -> KeyRecord:
        record = self.store.resolve(key_ref)
        if record is None:
            raise KmsError("NotFoundException", f"Key '{key_ref}' does not exist")
        entry.key_arn = record.arn
        return record

    def _key_param(self, params: Params, entry: AuditEntry) -> KeyRecord:
        return self._resolve(params.required_string("KeyId"), entry)

    def _condition_keys(
        self,
        principal: Principal,
        context: Mapping[str, str] | None,
        attested: Attested | None,
        encryption_algorithm: bool = False,
    ) -> dict[str, tuple[str, ...]]:
        keys: dict[str, tuple[str, ...]] = {
            "aws:principalarn": (principal.arn,),
            "aws:principalaccount": (principal.account_id,),
            "kms:calleraccount": (principal.account_id,),
        }
        if context:
            keys["kms:encryptioncontextkeys"] = tuple(context)
            for name, value in context.items():
                keys[f"kms:encryptioncontext:{name}".lower()] = (value,)
        if encryption_algorithm:
            keys["kms:encryptionalgorithm"] = (SYMMETRIC_DEFAULT,)
        if attested is not None:
            for index, digest in attested.pcrs.items():
                keys[f"kms:recipientattestation:pcr{index}"] = (digest.hex(),)
            if 0 in attested.pcrs:
                keys["kms:recipientattestation:imagesha384"] = (attested.pcrs[0].hex(),)
        return keys

    def _authorize(
        self,
        principal: Principal,
        record: KeyRecord,
        action: str,
        entry: AuditEntry,
        keys: Mapping[str, tuple[str, ...]] | None = None,
    ) -> None:
        ctx = pol.RequestContext(
            principal_arn=principal.arn,
            action=action,
            resource=record.arn,
            condition_keys=keys
            if keys is not None
            else self._condition_keys(principal, None, None),
        )
        try:
            decision = pol.evaluate(pol.parse_policy(record.policy), ctx)
        except pol.PolicyError:
            decision = pol.Decision.IMPLICIT_DENY  # a stored policy is validated; fail closed
        if decision is not pol.Decision.ALLOW:
            entry.decision = "deny"
            why = (
                "an explicit deny in the key policy applies"
                if decision is pol.Decision.EXPLICIT_DENY
                else "no resource-based policy allows the action"
            )
            raise _access_denied(principal, action, record.arn, why)

    @staticmethod
    def _require_usable(record: KeyRecord) -> None:
        if record.state == DISABLED:
            raise KmsError("DisabledException", f"{record.arn} is disabled.")
        if record.state != ENABLED:
            raise KmsError("KMSInvalidStateException", f"{record.arn} is pending deletion.")

    @staticmethod
    def _dry_run(params: Params) -> None:
        if params.boolean("DryRun"):
            raise KmsError(
                "DryRunOperationException",
                "The request would have succeeded, but the DryRun option is set.",
                status=412,
            )

    def _recipient(self, params: Params, entry: AuditEntry) -> Attested | None:
        recipient = params.structure("Recipient")
        if recipient is None:
            return None
        entry.recipient = True
        recipient.choice("KeyEncryptionAlgorithm", (RSAES_OAEP_SHA_256,))
        document = recipient.required_blob("AttestationDocument", max_len=MAX_ATTESTATION_DOCUMENT)
        try:
            verified = verify_attestation(document, trusted_roots=self.trusted_roots)
        except AttestationError as exc:
            raise validation(f"The attestation document is invalid: {exc.reason}") from None
        if verified.public_key is None:
            raise validation("The attestation document does not contain a public key")
        try:
            public_key = load_recipient_key(verified.public_key)
        except RecipientKeyError as exc:
            raise validation(str(exc)) from None
        if 0 in verified.pcrs:
            entry.recipient_pcr0 = verified.pcrs[0].hex()
        return Attested(pcrs=verified.pcrs, public_key=public_key)

    def _plaintext_response(self, plaintext: bytes, attested: Attested | None) -> dict[str, str]:
        if attested is None:
            return {"Plaintext": encode_blob(plaintext)}
        envelope = build_enveloped_data(plaintext, attested.public_key)
        return {"CiphertextForRecipient": encode_blob(envelope)}

    def _lockout_check(self, principal: Principal, document: pol.Policy, key_arn: str) -> None:
        ctx = pol.RequestContext(
            principal_arn=principal.arn,
            action="kms:PutKeyPolicy",
            resource=key_arn,
            condition_keys=self._condition_keys(principal, None, None),
        )
        if pol.evaluate(document, ctx) is not pol.Decision.ALLOW:
            raise KmsError(
                "MalformedPolicyDocumentException",
                "The new key policy will not allow you to update the key policy in the future.",
            )

    @staticmethod
    def _parse_policy(text: str) -> pol.Policy:
        try:
            return pol.parse_policy(text)
        except pol.PolicyError as exc:
            raise KmsError("MalformedPolicyDocumentException", str(exc)) from None

    def _metadata(self, record: KeyRecord) -> dict[str, Any]:
        metadata: dict[str, Any] = {
            "AWSAccountId": self.principals.account_id,
            "KeyId": record.key_id,
            "Arn": record.arn,
            "CreationDate": record.creation_date,
            "Enabled": record.state == ENABLED,
            "Description": record.description,
            "KeyUsage": "ENCRYPT_DECRYPT",
            "KeyState": record.state,
            "Origin": "AWS_KMS",
            "KeyManager": "CUSTOMER",
            "CustomerMasterKeySpec": SYMMETRIC_DEFAULT,
            "KeySpec": SYMMETRIC_DEFAULT,
            "EncryptionAlgorithms": [SYMMETRIC_DEFAULT],
            "MultiRegion": record.multi_region,
        }
        if record.multi_region:
            metadata["MultiRegionConfiguration"] = multi_region_metadata(self.stores, record)
        if record.deletion_date is not None:
            metadata["DeletionDate"] = record.deletion_date
        return metadata

    # --------------------------------------------------------- key management

    def _create_key(
        self, principal: Principal, params: Params, entry: AuditEntry
    ) -> dict[str, Any]:
        text = params.string("Policy", max_len=pol.MAX_POLICY_BYTES)
        description = params.raw.get("Description", "")
        if not isinstance(description, str) or len(description) > 8192:
            raise validation("'Description' must be a string of at most 8192 characters")
        params.choice("KeyUsage", ("ENCRYPT_DECRYPT",))
        params.choice("KeySpec", (SYMMETRIC_DEFAULT,))
        params.choice("CustomerMasterKeySpec", (SYMMETRIC_DEFAULT,))
        params.choice("Origin", ("AWS_KMS",))
        if params.raw.get("CustomKeyStoreId") is not None or params.raw.get("XksKeyId") is not None:
            raise KmsError("UnsupportedOperationException", "custom key stores are not simulated")
        multi_region = bool(params.boolean("MultiRegion"))
        tags = parse_tags(params.raw.get("Tags"), required=False)
        bypass = params.boolean("BypassPolicyLockoutSafetyCheck")
        if not principal.administrator:
            entry.decision = "deny"
            raise _access_denied(
                principal, "kms:CreateKey", "*", "no identity-based policy allows the action"
            )
        key_id = self.store.new_key_id(multi_region)
        if text is None:
            text = pol.default_key_policy(principal.arn)
        else:
            document = self._parse_policy(text)
            if not bypass:
                self._lockout_check(principal, document, self.store.key_arn(key_id))
        record = self.store.create_key(text, description, key_id, tags)
        entry.key_arn = record.arn
        if tags:
            entry.extra["tag_keys"] = [name for name, _ in tags]
        return {"KeyMetadata": self._metadata(record)}

    def _describe_key(
        self, principal: Principal, params: Params, entry: AuditEntry
    ) -> dict[str, Any]:
        record = self._key_param(params, entry)
        self._authorize(principal, record, "kms:DescribeKey", entry)
        return {"KeyMetadata": self._metadata(record)}

    @staticmethod
    def _page(params: Params, items: list[Any]) -> tuple[list[Any], dict[str, Any]]:
        limit = params.integer("Limit", 1, 1000) or 100
        marker = params.string("Marker", max_len=32)
        start = 0
        if marker is not None:
            if not marker.isdigit() or int(marker) > len(items):
                raise KmsError("InvalidMarkerException", "The marker is not valid")
            start = int(marker)
        page = items[start : start + limit]
        more = start + limit < len(items)
        extra: dict[str, Any] = {"Truncated": more}
        if more:
            extra["NextMarker"] = str(start + limit)
        return page, extra

    def _list_keys(self, principal: Principal, params: Params, entry: AuditEntry) -> dict[str, Any]:
        page, extra = self._page(params, self.store.list_keys())
        return {"Keys": [{"KeyId": r.key_id, "KeyArn": r.arn} for r in page], **extra}

    def _create_alias(
        self, principal: Principal, params: Params, entry: AuditEntry
    ) -> dict[str, Any]:
        alias = params.required_string("AliasName", max_len=256)
        target = params.required_string("TargetKeyId")
        if not ALIAS_RE.match(alias) or alias.startswith("alias/aws/"):
            raise KmsError("InvalidAliasNameException", f"Alias {alias} is not a valid alias name")
        if "alias/" in target:
            raise validation("TargetKeyId must be a key id or key ARN, not an alias")
        record = self._resolve(target, entry)
        self._authorize(principal, record, "kms:CreateAlias", entry)
        if record.state in PENDING_STATES:
            raise KmsError("KMSInvalidStateException", f"{record.arn} is pending deletion.")
        if not self.store.create_alias(alias, record.key_id):
            raise KmsError(
                "AlreadyExistsException", f"An alias with the name {alias} already exists"
            )
        entry.extra["alias"] = alias
        return {}

    def _list_aliases(
        self, principal: Principal, params: Params, entry: AuditEntry
    ) -> dict[str, Any]:
        key_ref = params.string("KeyId")
        aliases = self.store.aliases()
        if key_ref is not None:
            record = self._resolve(key_ref, entry)
            aliases = [(a, k) for a, k in aliases if k == record.key_id]
        page, extra = self._page(params, aliases)
        return {
            "Aliases": [
                {"AliasName": a, "AliasArn": self.store.alias_arn(a), "TargetKeyId": k}
                for a, k in page
            ],
            **extra,
        }

    def _put_key_policy(
        self, principal: Principal, params: Params, entry: AuditEntry
    ) -> dict[str, Any]:
        record = self._key_param(params, entry)
        text = params.required_string("Policy", max_len=pol.MAX_POLICY_BYTES)
        params.choice("PolicyName", ("default",))
        bypass = params.boolean("BypassPolicyLockoutSafetyCheck")
        self._authorize(principal, record, "kms:PutKeyPolicy", entry)
        if record.state in PENDING_STATES:
            raise KmsError("KMSInvalidStateException", f"{record.arn} is pending deletion.")
        document = self._parse_policy(text)
        if not bypass:
            self._lockout_check(principal, document, record.arn)
        self.store.update(record, policy=text)
        return {}

    def _get_key_policy(
        self, principal: Principal, params: Params, entry: AuditEntry
    ) -> dict[str, Any]:
        record = self._key_param(params, entry)
        params.choice("PolicyName", ("default",))
        self._authorize(principal, record, "kms:GetKeyPolicy", entry)
        return {"Policy": record.policy, "PolicyName": "default"}

    def _set_state(
        self, principal: Principal, params: Params, entry: AuditEntry, action: str, state: str
    ) -> KeyRecord:
        record = self._key_param(params, entry)
        self._authorize(principal, record, action, entry)
        if record.state in PENDING_STATES:
            raise KmsError("KMSInvalidStateException", f"{record.arn} is pending deletion.")
        return self.store.update(record, state=state)

    def _enable_key(
        self, principal: Principal, params: Params, entry: AuditEntry
    ) -> dict[str, Any]:
        self._set_state(principal, params, entry, "kms:EnableKey", ENABLED)
        return {}

    def _disable_key(
        self, principal: Principal, params: Params, entry: AuditEntry
    ) -> dict[str, Any]:
        self._set_state(principal, params, entry, "kms:DisableKey", DISABLED)
        return {}

    def _schedule_key_deletion(
        self, principal: Principal, params: Params, entry: AuditEntry
    ) -> dict[str, Any]:
        record = self._key_param(params, entry)
        window = params.integer("PendingWindowInDays", 7, 30)
        days = window or 30
        keys = self._condition_keys(principal, None, None)
        if window is not None:  # the condition key exists only when the caller sets it
            keys["kms:schedulekeydeletionpendingwindowindays"] = (str(window),)
        self._authorize(principal, record, "kms:ScheduleKeyDeletion", entry, keys)
        if record.state in PENDING_STATES:
            raise KmsError("KMSInvalidStateException", f"{record.arn} is pending deletion.")
        when = time.time() + days * 86400
        # AWS: a primary with replicas waits for them; its window starts after the last.
        state = PENDING_REPLICA_DELETION if record.replica_regions else PENDING_DELETION
        self.store.update(record, state=state, deletion_date=when)
        entry.extra["pending_window_days"] = days
        return {
            "KeyId": record.arn,
            "DeletionDate": when,
            "KeyState": state,
            "PendingWindowInDays": days,
        }

    def _cancel_key_deletion(
        self, principal: Principal, params: Params, entry: AuditEntry
    ) -> dict[str, Any]:
        record = self._key_param(params, entry)
        self._authorize(principal, record, "kms:CancelKeyDeletion", entry)
        if record.state not in PENDING_STATES:
            raise KmsError("KMSInvalidStateException", f"{record.arn} is not pending deletion.")
        self.store.update(record, state=DISABLED, deletion_date=None)
        return {"KeyId": record.arn}

    # ------------------------------------------------------------ cryptography

    def _encrypt(self, principal: Principal, params: Params, entry: AuditEntry) -> dict[str, Any]:
        record = self._key_param(params, entry)
        plaintext = params.required_blob("Plaintext", max_len=MAX_PLAINTEXT)
        context = params.encryption_context()
        params.choice("EncryptionAlgorithm", (SYMMETRIC_DEFAULT,))
        params.string_list("GrantTokens")
        keys = self._condition_keys(principal, context, None, encryption_algorithm=True)
        self._authorize(principal, record, "kms:Encrypt", entry, keys)
        self._require_usable(record)
        self._dry_run(params)
        return {
            "CiphertextBlob": encode_blob(seal(record, plaintext, context)),
            "KeyId": record.arn,
            "EncryptionAlgorithm": SYMMETRIC_DEFAULT,
        }

    def _decrypt(self, principal: Principal, params: Params, entry: AuditEntry) -> dict[str, Any]:
        blob = params.required_blob("CiphertextBlob", max_len=MAX_CIPHERTEXT)
        context = params.encryption_context()
        params.choice("EncryptionAlgorithm", (SYMMETRIC_DEFAULT,))
        params.string_list("GrantTokens")
        key_ref = params.string("KeyId")
        try:
            named = blob_key_id(blob)
        except BlobError as exc:
            raise KmsError("InvalidCiphertextException", str(exc)) from None
        if key_ref is not None:
            record = self._resolve(key_ref, entry)
            if record.key_id != named:
                raise KmsError(
                    "IncorrectKeyException",
                    "The key ID in the request does not identify a KMS key that can perform "
                    "this operation.",
                )
        else:
            found = self.store.get(named)
            if found is None:
                raise KmsError("InvalidCiphertextException", "the ciphertext names an unknown key")
            record = found
            entry.key_arn = record.arn
        attested = self._recipient(params, entry)
        keys = self._condition_keys(principal, context, attested, encryption_algorithm=True)
        self._authorize(principal, record, "kms:Decrypt", entry, keys)
        self._require_usable(record)
        self._dry_run(params)
        try:
            plaintext = open_blob(record, blob, context)
        except BlobError:
            raise KmsError("InvalidCiphertextException", "") from None
        return {
            "KeyId": record.arn,
            "EncryptionAlgorithm": SYMMETRIC_DEFAULT,
            **self._plaintext_response(plaintext, attested),
        }

    def _data_key_size(self, params: Params) -> int:
        spec = params.choice("KeySpec", tuple(DATA_KEY_BYTES))
        size = params.integer("NumberOfBytes", 1, 1024)
        if (spec is None) == (size is None):
            raise validation("Specify exactly one of KeySpec and NumberOfBytes")
        return DATA_KEY_BYTES[spec] if spec is not None else int(size or 0)

    def _generate(
        self, principal: Principal, params: Params, entry: AuditEntry, action: str, recipient: bool
    ) -> tuple[KeyRecord, bytes, bytes, Attested | None]:
        record = self._key_param(params, entry)
        size = self._data_key_size(params)
        context = params.encryption_context()
        params.string_list("GrantTokens")
        attested = self._recipient(params, entry) if recipient else None
        keys = self._condition_keys(principal, context, attested)
        self._authorize(principal, record, action, entry, keys)
        self._require_usable(record)
        self._dry_run(params)
        data_key = os.urandom(size)
        return record, data_key, seal(record, data_key, context), attested

    def _generate_data_key(
        self, principal: Principal, params: Params, entry: AuditEntry
    ) -> dict[str, Any]:
        record, data_key, blob, attested = self._generate(
            principal, params, entry, "kms:GenerateDataKey", recipient=True
        )
        return {
            "CiphertextBlob": encode_blob(blob),
            "KeyId": record.arn,
            **self._plaintext_response(data_key, attested),
        }

    def _generate_data_key_without_plaintext(
        self, principal: Principal, params: Params, entry: AuditEntry
    ) -> dict[str, Any]:
        record, _data_key, blob, _ = self._generate(
            principal, params, entry, "kms:GenerateDataKeyWithoutPlaintext", recipient=False
        )
        return {"CiphertextBlob": encode_blob(blob), "KeyId": record.arn}

    def _generate_random(
        self, principal: Principal, params: Params, entry: AuditEntry
    ) -> dict[str, Any]:
        size = params.integer("NumberOfBytes", 1, 1024, required=True)
        if params.raw.get("CustomKeyStoreId") is not None:
            raise KmsError("UnsupportedOperationException", "custom key stores are not simulated")
        attested = self._recipient(params, entry)
        return self._plaintext_response(os.urandom(int(size or 0)), attested)
