"""Batch signing end to end on the simulated appliance: the REST batch goes to the real
enclave as one sign_batch frame; every signature is recovered by eth-account."""

from __future__ import annotations

import pytest
from eth_account import Account

from nitro_sim.stack import LocalStack, http_json
from tests.stack_helpers import create_account, eip1559

pytestmark = pytest.mark.stack


def test_a_rest_batch_is_signed_by_the_enclave_item_by_item(stack: LocalStack) -> None:
    account = create_account(stack)
    transactions = [eip1559(nonce) for nonce in range(50)]
    transactions[7] = eip1559(7, value="1000")  # a decimal string: this item alone fails
    transactions[9] = eip1559(9, **{"from": "0x" + "22" * 20})  # another sender
    status, body = http_json(
        "POST",
        f"{stack.relay_url}/v1/accounts/{account['account_id']}/sign/transactions",
        {"transactions": transactions},
    )
    assert status == 200, body
    results = body["results"]
    assert len(results) == 50
    for index, result in enumerate(results):
        if index in (7, 9):
            assert result["error"]["code"] == "invalid_params", result
            continue
        assert Account.recover_transaction(result["raw_transaction"]) == account["address"]
        single_status, single = (
            http_json(
                "POST",
                f"{stack.relay_url}/v1/accounts/{account['account_id']}/sign/transaction",
                {"transaction": transactions[index]},
            )
            if index in (0, 49)
            else (200, result)
        )
        assert single_status == 200
        assert single == result  # the batch signs exactly as the single endpoint
