"""The KMS keys this image may use, and multi-Region keys seen from its own region.

The image pins its keys (``kms.allowed_key_ids`` in enclave.toml, measured into PCR0):
it never calls KMS with a key the parent names unless that key is pinned.

A stored record names the key its data key was made under, as an ARN of the region
where the account was created. A KMS multi-Region key has the same key id
(``mrk-`` and 32 hex digits) and key material in every region it is replicated to, so
an enclave in another region (disaster recovery) decrypts the record's data key
through its own regional replica: ``arn:aws:kms:us-east-1:111122223333:key/mrk-1234...``
becomes ``arn:aws:kms:eu-west-1:111122223333:key/mrk-1234...``. The mapping applies only
when partition, account and multi-Region key id all match and the regional ARN is
itself pinned; a single-Region key (its id is a UUID) is never remapped, and a key
that is not pinned in this region is refused. The EncryptionContext is unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from enclave_app.errors import EnclaveError, ErrorCode

__all__ = ["REGION_RE", "KeyArn", "PinnedKeys", "endpoint_region"]

_REGION = r"[a-z]{2}(?:-[a-z]+)+-\d{1,2}"
#: An AWS region name (us-east-1, eu-west-1, us-gov-west-1, cn-north-1, ...).
REGION_RE = re.compile(_REGION)
_ARN_RE = re.compile(
    rf"arn:(?P<partition>aws(?:-[a-z]+)*):kms:(?P<region>{_REGION}):"
    r"(?P<account>\d{12}):key/(?P<key_id>[A-Za-z0-9-]{1,256})"
)
_MULTI_REGION_KEY_ID_RE = re.compile(r"mrk-[0-9a-f]{32}")
#: Public KMS endpoints name their region: kms.R.amazonaws.com, kms-fips.R.amazonaws.com,
#: kms.R.amazonaws.com.cn, and the dual-stack kms.R.api.aws.
_ENDPOINT_RE = re.compile(
    rf"kms(?:-fips)?\.(?P<region>{_REGION})\.(?:amazonaws\.com(?:\.cn)?|api\.aws)"
)


@dataclass(frozen=True)
class KeyArn:
    """A KMS key ARN: ``arn:PARTITION:kms:REGION:ACCOUNT:key/KEY_ID``."""

    partition: str
    region: str
    account: str
    key_id: str

    @classmethod
    def parse(cls, text: str) -> KeyArn | None:
        """The parts of a key ARN, or None for anything else (a bare id, an alias)."""
        found = _ARN_RE.fullmatch(text)
        if found is None:
            return None
        return cls(found["partition"], found["region"], found["account"], found["key_id"])

    @property
    def multi_region(self) -> bool:
        return _MULTI_REGION_KEY_ID_RE.fullmatch(self.key_id) is not None

    def in_region(self, region: str) -> KeyArn:
        return KeyArn(self.partition, region, self.account, self.key_id)

    def __str__(self) -> str:
        return f"arn:{self.partition}:kms:{self.region}:{self.account}:key/{self.key_id}"


def endpoint_region(host: str) -> str | None:
    """The region a public KMS endpoint host name serves, or None for other hosts."""
    found = _ENDPOINT_RE.fullmatch(host)
    return found["region"] if found is not None else None


class PinnedKeys:
    """The pinned key ids of an enclave that calls the KMS endpoint of ``region``."""

    def __init__(self, key_ids: Iterable[str], region: str) -> None:
        self._pinned = frozenset(key_ids)
        self._region = region

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._pinned

    def require(self, key_id: str) -> None:
        """Refuse ``key_id`` with ``kms_key_not_allowed`` unless it is pinned as named."""
        if key_id not in self._pinned:
            raise _not_pinned(key_id)

    def resolve(self, key_id: str) -> str:
        """The pinned key id to call KMS with for a record that names ``key_id``.

        ``key_id`` itself when pinned; else, for a multi-Region key ARN of another
        region, the same key's ARN in this enclave's region when that one is pinned.
        Anything else is refused with ``kms_key_not_allowed``.
        """
        if key_id in self._pinned:
            return key_id
        arn = KeyArn.parse(key_id)
        if arn is not None and arn.multi_region and arn.region != self._region:
            regional = str(arn.in_region(self._region))
            if regional in self._pinned:
                return regional
            raise EnclaveError(
                ErrorCode.KMS_KEY_NOT_ALLOWED,
                f"{key_id!r} is a multi-Region key, but this image does not pin its "
                f"replica in {self._region} ({regional!r})",
            )
        raise _not_pinned(key_id)

    def answered(self, key_arn: str) -> bool:
        """Whether the key KMS says it used (always an ARN) is one of the pinned keys."""
        if key_arn in self._pinned:
            return True
        arn = KeyArn.parse(key_arn)
        return arn is not None and arn.region == self._region and arn.key_id in self._pinned


def _not_pinned(key_id: str) -> EnclaveError:
    return EnclaveError(
        ErrorCode.KMS_KEY_NOT_ALLOWED,
        "this enclave image only uses the KMS keys it was built with; "
        f"{key_id!r} is not one of them",
    )
