"""Pinned KMS keys and multi-Region keys seen from the enclave's region
(enclave_app.key_ids), and the region rules of enclave.toml."""

from __future__ import annotations

import pytest

from enclave_app.config import ConfigError, EnclaveConfig
from enclave_app.errors import EnclaveError, ErrorCode
from enclave_app.key_ids import KeyArn, PinnedKeys, endpoint_region

ACCOUNT = "111122223333"
MRK = "mrk-0123456789abcdef0123456789abcdef"
OTHER_MRK = "mrk-fedcba9876543210fedcba9876543210"
SINGLE = "0d3c2b1a-0000-4000-8000-000000000001"


def arn(region: str, key_id: str = MRK, account: str = ACCOUNT, partition: str = "aws") -> str:
    return f"arn:{partition}:kms:{region}:{account}:key/{key_id}"


PRIMARY = arn("us-east-1")
REPLICA = arn("eu-west-1")


def test_key_arns_parse_and_move_between_regions() -> None:
    parsed = KeyArn.parse(PRIMARY)
    assert parsed == KeyArn("aws", "us-east-1", ACCOUNT, MRK)
    assert parsed.multi_region
    assert str(parsed.in_region("eu-west-1")) == REPLICA
    assert str(parsed) == PRIMARY
    gov = KeyArn.parse(arn("us-gov-west-1", partition="aws-us-gov"))
    assert gov is not None
    assert gov.partition == "aws-us-gov"
    single = KeyArn.parse(arn("us-east-1", SINGLE))
    assert single is not None
    assert not single.multi_region


@pytest.mark.parametrize(
    "text",
    [
        MRK,  # a bare key id
        "alias/nitro-wallet",
        PRIMARY + "\n",
        PRIMARY.replace(":kms:", ":s3:"),
        arn("us-east-1", account="1234"),
        arn("not_a_region"),
        "arn:aws:kms:us-east-1:111122223333:alias/nitro-wallet",
    ],
)
def test_anything_but_a_key_arn_is_not_parsed(text: str) -> None:
    assert KeyArn.parse(text) is None


@pytest.mark.parametrize(
    ("host", "region"),
    [
        ("kms.eu-west-1.amazonaws.com", "eu-west-1"),
        ("kms-fips.us-east-1.amazonaws.com", "us-east-1"),
        ("kms.cn-north-1.amazonaws.com.cn", "cn-north-1"),
        ("kms.ap-southeast-2.api.aws", "ap-southeast-2"),
        ("127.0.0.1", None),
        ("kms.internal.example", None),
        ("vpce-1234.kms.us-east-1.vpce.amazonaws.com", None),
    ],
)
def test_public_kms_endpoints_name_their_region(host: str, region: str | None) -> None:
    assert endpoint_region(host) == region


def test_a_pinned_key_is_used_as_named() -> None:
    pinned = PinnedKeys([REPLICA, arn("eu-west-1", SINGLE)], "eu-west-1")
    assert pinned.resolve(REPLICA) == REPLICA
    assert pinned.resolve(arn("eu-west-1", SINGLE)) == arn("eu-west-1", SINGLE)


@pytest.mark.parametrize("record_region", ["us-east-1", "ap-south-1"])
def test_a_multi_region_key_of_another_region_goes_through_the_pinned_replica(
    record_region: str,
) -> None:
    pinned = PinnedKeys([REPLICA], "eu-west-1")
    assert pinned.resolve(arn(record_region)) == REPLICA


@pytest.mark.parametrize(
    ("record_key", "why"),
    [
        # the same key id in another account
        (arn("us-east-1", account="999988887777"), "does not pin its replica"),
        # another multi-Region key
        (arn("us-east-1", OTHER_MRK), "does not pin its replica"),
        # another partition
        (arn("us-east-1", partition="aws-cn"), "does not pin its replica"),
        # a single-Region key is never remapped, even with the same id pinned elsewhere
        (arn("us-east-1", SINGLE), "is not one of them"),
        # a key of this region that is not pinned
        (arn("eu-west-1", OTHER_MRK), "is not one of them"),
        # a bare multi-Region id: no region, no account to check
        (MRK, "is not one of them"),
        ("alias/nitro-wallet", "is not one of them"),
    ],
)
def test_no_other_key_is_reached(record_key: str, why: str) -> None:
    pinned = PinnedKeys([REPLICA, arn("eu-west-1", SINGLE)], "eu-west-1")
    with pytest.raises(EnclaveError, match=why) as refused:
        pinned.resolve(record_key)
    assert refused.value.code is ErrorCode.KMS_KEY_NOT_ALLOWED


def test_a_new_data_key_is_made_only_under_a_key_pinned_as_named() -> None:
    pinned = PinnedKeys([REPLICA], "eu-west-1")
    pinned.require(REPLICA)
    for key_id in (PRIMARY, MRK, "alias/nitro-wallet"):  # no replica mapping for new keys
        with pytest.raises(EnclaveError, match="is not one of them") as refused:
            pinned.require(key_id)
        assert refused.value.code is ErrorCode.KMS_KEY_NOT_ALLOWED


def test_only_a_pinned_key_of_this_region_may_answer() -> None:
    pinned = PinnedKeys([REPLICA, SINGLE], "eu-west-1")
    assert pinned.answered(REPLICA)
    assert pinned.answered(arn("eu-west-1", SINGLE))  # a bare pinned id, answered as an ARN
    assert not pinned.answered(PRIMARY)  # the primary region's ARN of the same key
    assert not pinned.answered(arn("us-east-1", SINGLE))
    assert not pinned.answered(arn("eu-west-1", OTHER_MRK))


def kms_config(**values: object) -> dict[str, object]:
    return {"kms": {"allowed_key_ids": [REPLICA], "region": "eu-west-1", **values}}


def test_a_dr_region_config_pins_its_replica_and_names_its_endpoint() -> None:
    config = EnclaveConfig.from_mapping(
        kms_config(endpoint_host="kms.eu-west-1.amazonaws.com"), environ={}
    )
    assert (config.region, config.allowed_key_ids) == ("eu-west-1", (REPLICA,))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"allowed_key_ids": [REPLICA, PRIMARY]}, "is a key of us-east-1, but kms.region is"),
        ({"region": "us-east-1"}, "is a key of eu-west-1, but kms.region is us-east-1"),
        ({"endpoint_host": "kms.us-east-1.amazonaws.com"}, "serves us-east-1, but kms.region"),
        ({"region": "Europe"}, "is not an AWS region name"),
    ],
)
def test_kms_settings_that_disagree_on_the_region_are_refused(
    values: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        EnclaveConfig.from_mapping(kms_config(**values), environ={})


@pytest.mark.parametrize(
    ("values", "message"),
    [({"probe_interval_seconds": 0}, r"\[1, 3600\]"), ({"probe_interval_seconds": 3601}, "3600")],
)
def test_the_probe_interval_is_bounded(values: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        EnclaveConfig.from_mapping(kms_config(**values), environ={})
    assert EnclaveConfig.from_mapping(kms_config(), environ={}).kms_probe_interval_seconds == 30
