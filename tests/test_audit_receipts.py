"""Enclave receipts (real chains, the simulated NSM's attestation) and
``nitro_wallet.audit.verify_log``: every removed, edited or reordered line is named."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from enclave_app.auth import receipt_format as fmt
from enclave_app.auth.canonical import b64url
from enclave_app.auth.receipts import AuditDecision, ReceiptChain
from enclave_app.errors import EnclaveError, ErrorCode
from nitro_wallet.audit import AuditLogError, verify_log
from tests.auditlog import PCR0, SimEnclaveNsm, boot, collect, decide, last_ref, raw
from tests.simhelpers import make_ca


@pytest.fixture(scope="module")
def roots(audit_nsm: SimEnclaveNsm) -> tuple[str]:
    return (audit_nsm.ca.root_fingerprint,)


@pytest.fixture(scope="module")
def two_segments(audit_nsm: SimEnclaveNsm) -> list[str]:
    """Segment 1: frames of 1, 3 and 2 decisions; the enclave restarts; segment 2 is
    linked to it by the writer and holds frames of 2 and 1."""
    lines: list[str] = []
    first = boot(audit_nsm)
    decide(first, 1)
    collect(first, lines)
    decide(first, 3)
    decide(first, 2, allowed=False)
    collect(first, lines)
    second = boot(audit_nsm)
    decide(second, 2)
    collect(second, lines)
    decide(second, 1)
    collect(second, lines)
    return lines


def failure(lines: list[str], roots: tuple[str], **kwargs: Any) -> AuditLogError:
    with pytest.raises(AuditLogError) as caught:
        verify_log(raw(lines), roots, **kwargs)
    return caught.value


def test_a_genuine_log_verifies(two_segments: list[str], roots: tuple[str]) -> None:
    report = verify_log(raw(two_segments), roots, expect_pcr0=PCR0)
    assert report.lines == len(two_segments) == 1 + 6 + 1 + 1 + 3
    assert [s["receipts"] for s in report.segments] == [7, 5]
    assert report.segments[1]["linked"]
    assert report.gaps == []
    assert report.decisions == {"allow": 7, "deny": 2}


def test_receipts_are_sealed_once_per_frame(two_segments: list[str]) -> None:
    sealed = ["sig" in json.loads(line) for line in two_segments]
    # genesis, frame 1, frame 3 (last), frame 2 (last) | genesis, frame 2, link, frame 1
    assert sealed == [True, True, False, False, True, False, True, True, False, True, True, True]


def test_the_log_names_the_attested_pcr0_and_refuses_another(
    two_segments: list[str], roots: tuple[str]
) -> None:
    error = failure(two_segments, roots, expect_pcr0=bytes(48))
    assert error.line == 1
    assert "PCR0" in error.reason


def test_another_root_refuses_the_log(two_segments: list[str], tmp_path: Path) -> None:
    other = make_ca(tmp_path)
    error = failure(two_segments, (other.root_fingerprint,))
    assert error.line == 1
    assert "attestation" in error.reason


@pytest.mark.parametrize("index", range(11))  # every line but the last (see the head test)
def test_deleting_any_line_names_it(two_segments: list[str], roots: tuple[str], index: int) -> None:
    lines = two_segments[:index] + two_segments[index + 1 :]
    assert failure(lines, roots).line == index + 1


def test_deleting_the_last_line_is_caught_by_the_enclave_head(
    audit_nsm: SimEnclaveNsm, roots: tuple[str]
) -> None:
    lines: list[str] = []
    chain = boot(audit_nsm)
    decide(chain, 1)
    decide(chain, 1)
    collect(chain, lines)
    head = chain.head(b"\x07" * 16)
    assert verify_log(raw(lines), roots, head=head).lines == 3
    error = failure(lines[:-1], roots, head=head)
    assert error.line == 3
    assert "removed from the end" in error.reason
    forged = {**head, "n": head["n"] - 1}
    assert "does not verify" in failure(lines[:-1], roots, head=forged).reason


def edit(line: str, change: Any) -> str:
    document = json.loads(line)
    change(document["receipt"])
    return fmt.canonical_json(document).decode()


@pytest.mark.parametrize("index", range(12))
def test_editing_any_line_names_it(two_segments: list[str], roots: tuple[str], index: int) -> None:
    def later(receipt: dict[str, Any]) -> None:
        receipt["t"] += 1

    lines = list(two_segments)
    lines[index] = edit(lines[index], later)
    assert failure(lines, roots).line == index + 1


def test_editing_a_decision_names_the_line(two_segments: list[str], roots: tuple[str]) -> None:
    def allow(receipt: dict[str, Any]) -> None:
        receipt["decision"], receipt["code"] = "allow", None

    lines = list(two_segments)
    assert json.loads(lines[5])["receipt"]["decision"] == "deny"
    lines[5] = edit(lines[5], allow)  # a denial turned into an allow, unsealed line
    error = failure(lines, roots)
    assert error.line == 6
    assert "edited" in error.reason


def test_a_non_canonical_line_is_an_edit(two_segments: list[str], roots: tuple[str]) -> None:
    lines = list(two_segments)
    lines[3] = lines[3].replace(",", ", ", 1)
    error = failure(lines, roots)
    assert (error.line, "canonical" in error.reason) == (4, True)


@pytest.mark.parametrize("index", range(11))
def test_swapping_any_two_neighbours_names_the_first(
    two_segments: list[str], roots: tuple[str], index: int
) -> None:
    lines = list(two_segments)
    lines[index], lines[index + 1] = lines[index + 1], lines[index]
    assert failure(lines, roots).line == index + 1


def test_swapping_whole_segments_is_refused(two_segments: list[str], roots: tuple[str]) -> None:
    lines = two_segments[7:] + two_segments[:7]
    error = failure(lines, roots)
    assert error.line == 6  # segment 1's genesis, now after segment 2 but attested before it


def test_a_receipt_sealed_by_another_key_is_refused(
    two_segments: list[str], roots: tuple[str]
) -> None:
    intruder = ed25519.Ed25519PrivateKey.generate()
    lines = list(two_segments)
    document = json.loads(lines[3])
    document["sig"] = b64url(intruder.sign(fmt.seal_message(fmt.receipt_hash(document["receipt"]))))
    lines[3] = fmt.canonical_json(document).decode()
    error = failure(lines, roots)
    assert error.line == 4
    assert "another key" in error.reason


def test_a_segment_whose_key_is_not_the_attested_one_is_refused(
    two_segments: list[str], roots: tuple[str]
) -> None:
    """Re-key a whole segment consistently: every seal verifies with the new key, but
    the attestation document binds the old one."""
    intruder = ed25519.Ed25519PrivateKey.generate()
    lines = list(two_segments[:7])
    prev = fmt.GENESIS_PREV
    for index, line in enumerate(lines):
        document = json.loads(line)
        receipt = document["receipt"]
        receipt["prev"] = prev
        if index == 0:
            receipt["key"] = b64url(intruder.public_key().public_bytes_raw())
        digest = fmt.receipt_hash(receipt)
        if "sig" in document:
            document["sig"] = b64url(intruder.sign(fmt.seal_message(digest)))
        lines[index] = fmt.canonical_json(document).decode()
        prev = digest.hex()
    error = failure(lines, roots)
    assert error.line == 1
    assert "does not bind this receipt key" in error.reason


def test_an_unlinked_segment_is_reported_as_a_gap(
    audit_nsm: SimEnclaveNsm, roots: tuple[str]
) -> None:
    lines: list[str] = []
    first = boot(audit_nsm)
    decide(first, 1)
    collect(first, lines)
    second = boot(audit_nsm)
    decide(second, 1)
    while True:  # a writer that does not name the previous segment (after=None)
        answer = second.pull(last_ref(lines) if lines[-1].find(second.segment.hex()) > 0 else None)
        if not answer["receipts"]:
            break
        lines.extend(answer["receipts"])
    report = verify_log(raw(lines), roots)
    assert len(report.gaps) == 1
    assert report.gaps[0].startswith("gap before line 3")


def test_a_link_to_a_missing_segment_is_refused(
    audit_nsm: SimEnclaveNsm, roots: tuple[str]
) -> None:
    lines: list[str] = []
    for _ in range(3):
        chain = boot(audit_nsm)
        decide(chain, 1)
        collect(chain, lines)
    # lines: segment A (1-2), B (3-5), C (6-8); drop all of B
    error = failure(lines[:2] + lines[5:], roots)
    assert error.line == 3
    assert "not in the log" in error.reason


# -- the ring ----------------------------------------------------------------------------


def test_a_lost_answer_is_pulled_again(audit_nsm: SimEnclaveNsm) -> None:
    chain = boot(audit_nsm)
    decide(chain, 2)
    first = chain.pull(None)
    again = chain.pull(None)  # the relay never saw the first answer
    assert first["receipts"] == again["receipts"]
    assert len(first["receipts"]) == 3


def test_unsealed_receipts_are_not_handed_out(audit_nsm: SimEnclaveNsm) -> None:
    chain = boot(audit_nsm)
    frame = chain.reserve(2)
    frame.record(AuditDecision(op="sign_message", allowed=True))
    assert len(chain.pull(None)["receipts"]) == 1  # genesis only: the frame is open
    frame.__exit__(None, None, None)
    assert len(chain.pull(None)["receipts"]) == 2


def test_a_full_ring_refuses_decisions_until_the_relay_collects(audit_nsm: SimEnclaveNsm) -> None:
    chain = boot(audit_nsm, capacity=4)
    decide(chain, 3)  # genesis + 3 = full
    with pytest.raises(EnclaveError) as caught:
        chain.reserve(1)
    assert caught.value.code == ErrorCode.AUDIT_BACKLOG_FULL
    lines: list[str] = []
    collect(chain, lines)
    chain.pull(last_ref(lines))  # acknowledges all four
    decide(chain, 3)


def test_pull_pages_in_counter_order(audit_nsm: SimEnclaveNsm) -> None:
    chain = boot(audit_nsm)
    for _ in range(5):
        decide(chain, 3)
    lines: list[str] = []
    collect(chain, lines, limit=4)
    assert [json.loads(line)["receipt"]["n"] for line in lines] == list(range(16))


def test_an_acknowledgement_beyond_the_sealed_head_is_refused(audit_nsm: SimEnclaveNsm) -> None:
    chain = boot(audit_nsm)
    with pytest.raises(EnclaveError) as caught:
        chain.pull({"seg": chain.segment.hex(), "n": 5, "hash": "00" * 32})
    assert caught.value.code == ErrorCode.INVALID_PARAMS


def test_receipts_never_carry_secrets(two_segments: list[str]) -> None:
    for line in two_segments:
        receipt = json.loads(line)["receipt"]
        assert not {"stamp", "token", "credentials", "private_key"} & set(receipt)


def test_a_genesis_per_boot_binds_a_fresh_key(audit_nsm: SimEnclaveNsm) -> None:
    first, second = boot(audit_nsm), boot(audit_nsm)
    assert first.public_key != second.public_key
    assert first.segment != second.segment
    assert isinstance(first, ReceiptChain)
