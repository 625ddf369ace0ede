"""The relay's audit log writer and the operator CLI (keygen, stamp, approve, token,
audit verify), run as the ``nitro-wallet`` console script would be."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from enclave_app.auth import canonical
from enclave_app.auth.approvals import DEFAULT_MAX_LIFETIME_SECONDS
from enclave_app.auth.receipts import ReceiptChain, audit_receipts_op
from enclave_app.errors import EnclaveError, ErrorCode
from nitro_wallet.stamping import load_key_file
from parent_app import audit_log
from parent_app.audit_log import AuditLogError, AuditLogWriter
from parent_app.tokens import check_token, read_records
from tests.auditlog import SimEnclaveNsm, boot, decide
from tests.authhelpers import entry


def cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nitro_wallet", *args],
        input=stdin.decode() if stdin else None,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class LossyEnclave:
    """The enclave's ``audit_receipts`` op, whose next answer can be lost on the way."""

    def __init__(self, chain: ReceiptChain) -> None:
        self.chain = chain
        self.lose_next = False

    def __call__(self, params: dict[str, Any]) -> dict[str, Any]:
        answer = audit_receipts_op(self.chain, params)
        if self.lose_next:
            self.lose_next = False
            raise EnclaveError(ErrorCode.INTERNAL, "connection reset")
        return answer


@pytest.mark.process
def test_the_writer_gets_every_receipt_through_lost_answers(
    audit_nsm: SimEnclaveNsm, tmp_path: Path
) -> None:
    log = tmp_path / "audit.jsonl"
    chain = boot(audit_nsm)
    enclave = LossyEnclave(chain)
    writer = AuditLogWriter(log, enclave)
    for _ in range(3):
        decide(chain, 2)
        enclave.lose_next = True
        with pytest.raises(EnclaveError):
            writer.drain()  # the answer is lost
        writer.drain()  # pulled again, from the same point
    second = boot(audit_nsm)  # the enclave restarts: a new segment, linked by the writer
    decide(second, 1)
    restarted = AuditLogWriter(
        log, lambda params: audit_receipts_op(second, params)
    )  # and so does the relay
    restarted.drain()
    root = tmp_path / "root.pem"
    root.write_bytes(audit_nsm.ca.root_pem)
    result = cli("audit", "verify", str(log), "--root", str(root), "--strict")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["lines"] == 1 + 6 + 1 + 1 + 1
    assert [s["linked"] for s in report["segments"]] == [False, True]


@pytest.mark.process
def test_audit_verify_names_a_removed_line_and_refuses_the_aws_root(
    audit_nsm: SimEnclaveNsm, tmp_path: Path
) -> None:
    log = tmp_path / "audit.jsonl"
    chain = boot(audit_nsm)
    for _ in range(3):
        decide(chain, 1)
    AuditLogWriter(log, lambda params: audit_receipts_op(chain, params)).drain()
    lines = log.read_text().splitlines(keepends=True)
    cut = tmp_path / "cut.jsonl"
    cut.write_text("".join(lines[:2] + lines[3:]))
    root = tmp_path / "root.pem"
    root.write_bytes(audit_nsm.ca.root_pem)
    result = cli("audit", "verify", str(cut), "--root", str(root))
    assert result.returncode == 1
    assert "line 3:" in result.stderr
    aws = cli("audit", "verify", str(log))  # the default root is AWS's: the simulator fails
    assert aws.returncode == 1
    assert "line 1:" in aws.stderr


def test_the_writer_refuses_a_batch_that_does_not_continue_the_log(
    audit_nsm: SimEnclaveNsm, tmp_path: Path
) -> None:
    log = tmp_path / "audit.jsonl"
    chain = boot(audit_nsm)
    decide(chain, 2)
    lines = chain.pull(None)["receipts"]

    def skipping(params: dict[str, Any]) -> dict[str, Any]:
        return {"receipts": [lines[0], lines[2]]}

    with pytest.raises(AuditLogError, match="does not follow"):
        AuditLogWriter(log, skipping).drain()
    assert log.read_bytes() == b""  # made at start (a relay fails early on a bad path)


def _reshaped(line: str, how: str) -> str:
    """A receipt line in a form that is not the canonical one (or, for ``same``, is)."""
    document = json.loads(line)
    if how == "spaced":
        return line.replace(",", ", ", 1)
    if how == "sig null":
        document["sig"] = None
    elif how == "sig number":
        document["sig"] = 7
    elif how == "extra member":
        document["note"] = "x"
    elif how == "keys unsorted":
        return json.dumps(dict(reversed(document.items())), separators=(",", ":"))
    return json.dumps(document, sort_keys=True, separators=(",", ":"))


def _once(lines: list[str]) -> audit_log.Pull:
    """An enclave that answers ``lines`` once, then nothing."""
    answers = [{"receipts": lines}]
    return lambda params: answers.pop() if answers else {"receipts": []}


@pytest.mark.parametrize("how", ["spaced", "keys unsorted"])
def test_the_writer_refuses_a_line_that_is_not_canonical(
    audit_nsm: SimEnclaveNsm, tmp_path: Path, how: str
) -> None:
    log = tmp_path / "audit.jsonl"
    chain = boot(audit_nsm)
    decide(chain, 1)
    lines = chain.pull(None)["receipts"]
    reshaped = [lines[0], _reshaped(lines[1], how)]
    assert reshaped[1] != lines[1]
    with pytest.raises(AuditLogError, match="not canonical"):
        AuditLogWriter(log, _once(reshaped)).drain()
    assert log.read_bytes() == b""


@pytest.mark.parametrize("how", ["sig null", "sig number", "extra member"])
def test_the_writer_checks_an_unusual_canonical_line_in_full(
    audit_nsm: SimEnclaveNsm, tmp_path: Path, how: str
) -> None:
    """Lines no enclave writes, but canonical: the writer keeps them as they are (audit
    verify judges them); non-canonical variants of them are refused."""
    log = tmp_path / "audit.jsonl"
    chain = boot(audit_nsm)
    decide(chain, 1)
    lines = chain.pull(None)["receipts"]
    odd = [lines[0], _reshaped(lines[1], how)]
    assert AuditLogWriter(log, _once(odd)).drain() == 2
    assert log.read_text().splitlines() == odd
    spaced = [lines[0], odd[1].replace(":", ": ", 1)]
    with pytest.raises(AuditLogError, match="not canonical"):
        AuditLogWriter(tmp_path / "other.jsonl", _once(spaced)).drain()


def test_the_writer_keeps_canonical_lines_sealed_or_not(
    audit_nsm: SimEnclaveNsm, tmp_path: Path
) -> None:
    log = tmp_path / "audit.jsonl"
    chain = boot(audit_nsm)
    decide(chain, 3)  # one frame: only its last receipt carries the seal
    lines = chain.pull(None)["receipts"]
    assert [("sig" in json.loads(line)) for line in lines] == [True, False, False, True]
    assert all(_reshaped(line, "same") == line for line in lines)
    pull = lambda params: audit_receipts_op(chain, params)  # noqa: E731
    assert AuditLogWriter(log, pull).drain() == len(lines)
    assert log.read_text().splitlines() == lines


def test_the_writer_cuts_a_partial_last_line(audit_nsm: SimEnclaveNsm, tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    chain = boot(audit_nsm)
    decide(chain, 1)
    AuditLogWriter(log, lambda params: audit_receipts_op(chain, params)).drain()
    complete = log.read_bytes()
    with log.open("ab") as handle:
        handle.write(b'{"receipt":{"att')
    writer = AuditLogWriter(log, lambda params: audit_receipts_op(chain, params))
    assert log.read_bytes() == complete
    decide(chain, 1)
    assert writer.drain() == 1


class CountingEnclave:
    """The enclave's ``audit_receipts`` op, counting the pulls and telling when one came."""

    def __init__(self, chain: ReceiptChain) -> None:
        self.chain = chain
        self.pulls = 0
        self.pulled = threading.Event()

    def __call__(self, params: dict[str, Any]) -> dict[str, Any]:
        self.pulls += 1
        self.pulled.set()
        return audit_receipts_op(self.chain, params)


def test_a_drain_stops_at_the_sealed_head_it_was_told(
    audit_nsm: SimEnclaveNsm, tmp_path: Path
) -> None:
    chain = boot(audit_nsm)
    decide(chain, 3)
    enclave = CountingEnclave(chain)
    writer = AuditLogWriter(tmp_path / "audit.jsonl", enclave)
    assert writer.drain() == 1 + 3  # genesis and the frame's three decisions
    assert enclave.pulls == 1  # the answer's `sealed` said nothing more was there
    last = writer.last
    assert last is not None
    assert last["n"] == 3
    assert writer.drain() == 0  # acknowledges n=3: it leaves the ring
    assert enclave.pulls == 2
    assert chain.pull(None)["receipts"] == []


def test_the_writer_pulls_shortly_after_a_decision_at_once_after_a_burst_and_at_stop(
    audit_nsm: SimEnclaveNsm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit_log, "EARLY_PULL_DECISIONS", 3)
    log = tmp_path / "audit.jsonl"
    chain = boot(audit_nsm)
    enclave = CountingEnclave(chain)
    writer = AuditLogWriter(log, enclave, interval=60).start()
    try:
        decide(chain, 1)
        writer.notify()
        assert enclave.pulled.wait(10)  # after LINGER_SECONDS, not the 60 s interval
        deadline = time.monotonic() + 10
        while writer.written < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert writer.written == 2  # genesis and the decision
        monkeypatch.setattr(audit_log, "LINGER_SECONDS", 60.0)
        enclave.pulled.clear()
        pulls = enclave.pulls
        for _ in range(2):
            decide(chain, 1)
            writer.notify()
        assert not enclave.pulled.wait(0.3)  # two decisions linger
        decide(chain, 1)
        writer.notify()
        assert enclave.pulled.wait(10)  # the third ends the wait
        assert enclave.pulls == pulls + 1
        decide(chain, 2)
        writer.notify()
    finally:
        writer.stop()
    assert len(log.read_text().splitlines()) == 1 + 1 + 3 + 2  # stop pulled the rest


@pytest.mark.process
def test_keygen_stamp_and_approve_make_headers_the_enclave_accepts(tmp_path: Path) -> None:
    api, approver = tmp_path / "api.pem", tmp_path / "alice.pem"
    made = cli("keygen", "--id", "ops-1", "--out", str(api), "--scopes", "sign,read,create")
    assert made.returncode == 0, made.stderr
    policy_entry = json.loads(made.stdout)["policy_entry"]
    assert policy_entry["scopes"] == ["create", "read", "sign"]
    assert policy_entry["public_key"].startswith("-----BEGIN PUBLIC KEY-----")
    assert stat.S_IMODE(api.stat().st_mode) == 0o600
    again = cli("keygen", "--id", "ops-1", "--out", str(api))
    assert again.returncode == 2
    assert "refusing to overwrite" in again.stderr
    assert (
        cli(
            "keygen",
            "--id",
            "alice",
            "--kind",
            "approver",
            "--algorithm",
            "p256",
            "--out",
            str(approver),
        ).returncode
        == 0
    )
    body = tmp_path / "body.json"
    body.write_bytes(b'{"message":"hello"}')
    path = "/v1/accounts/6f1c1d58-4a0e-4a7b-9d1e-0a0b0c0d0e0f/sign/message"
    stamped = cli(
        "stamp", "--key", str(api), "--method", "POST", "--path", path, "--body", str(body)
    )
    assert stamped.returncode == 0, stamped.stderr
    stamp = canonical.parse_stamp(stamped.stdout.strip())
    digest = canonical.request_digest("POST", path, body.read_bytes())
    message = canonical.stamp_message("ops-1", stamp.timestamp, stamp.nonce, digest)
    from enclave_app.auth.signatures import verify

    assert verify(entry(load_key_file(api)).public_key, message, stamp.signature)
    approved = cli(
        "approve",
        "--key",
        str(approver),
        "--method",
        "POST",
        "--path",
        path,
        "--body",
        "-",
        stdin=body.read_bytes(),
    )
    assert approved.returncode == 0, approved.stderr
    (approval,) = canonical.parse_approvals(approved.stdout.strip())
    assert approval.approver_id == "alice"
    wrong_kind = cli("stamp", "--key", str(approver), "--method", "POST", "--path", path)
    assert wrong_kind.returncode == 2
    api.chmod(0o644)
    exposed = cli("stamp", "--key", str(api), "--method", "POST", "--path", path)
    assert "chmod 600" in exposed.stderr


@pytest.mark.process
def test_approve_refuses_an_expiry_the_enclave_would_refuse(tmp_path: Path) -> None:
    """The enclave refuses an approval expiring more than its maximum lifetime ahead
    (approval_malformed; tests/test_approvals_stack.py): the CLI makes none."""
    key = tmp_path / "alice.pem"
    assert cli("keygen", "--id", "alice", "--kind", "approver", "--out", str(key)).returncode == 0
    path = "/v1/accounts/6f1c1d58-4a0e-4a7b-9d1e-0a0b0c0d0e0f/sign/message"
    request = ("approve", "--key", str(key), "--method", "POST", "--path", path)
    too_late = cli(*request, "--expires-in", str(DEFAULT_MAX_LIFETIME_SECONDS + 1))
    assert (too_late.returncode, too_late.stdout) == (2, "")
    assert f"1..{DEFAULT_MAX_LIFETIME_SECONDS} seconds" in too_late.stderr
    before = int(time.time())
    latest = cli(*request, "--expires-in", str(DEFAULT_MAX_LIFETIME_SECONDS))
    assert latest.returncode == 0, latest.stderr
    (approval,) = canonical.parse_approvals(latest.stdout.strip())
    assert before + DEFAULT_MAX_LIFETIME_SECONDS <= approval.expires <= int(time.time()) + 3600


@pytest.mark.process
def test_token_add_list_revoke(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.json"
    added = cli("token", "add", "--file", str(tokens), "--name", "ci-bot", "--scopes", "sign")
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip()
    assert check_token(read_records(tokens), token) is not None
    listed = json.loads(cli("token", "list", "--file", str(tokens)).stdout)
    assert [item["name"] for item in listed] == ["ci-bot"]
    assert token not in json.dumps(listed)
    revoked = cli("token", "revoke", "--file", str(tokens), "--id", listed[0]["id"])
    assert revoked.returncode == 0
    assert check_token(read_records(tokens), token) is None
    assert cli("token", "revoke", "--file", str(tokens), "--id", listed[0]["id"]).returncode == 1
