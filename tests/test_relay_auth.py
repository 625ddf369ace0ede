"""The relay's caller authentication and bearer tokens: 401 without credentials,
tokens checked here (hashed at rest, revocable live), stamps passed on untouched for
the enclave and verified here for read-only calls."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from enclave_app.auth.replay import ReplayMemory
from enclave_app.auth.stamps import StampVerifier
from nitro_wallet.stamping import make_stamp
from parent_app.auth import RelayAuth
from parent_app.errors import RelayError
from parent_app.http_envelope import header_map
from parent_app.tokens import (
    TokenFile,
    TokenFileError,
    add_token,
    check_token,
    read_records,
    revoke_token,
)
from tests.authhelpers import Clock, entry, key_file

PATH = "/v1/accounts/6f1c1d58-4a0e-4a7b-9d1e-0a0b0c0d0e0f/sign/message"
BODY = b'{"message":"hello"}'
API = key_file("ops-1")
READER = key_file("reader")


class Ticker:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def tokens_path(tmp_path: Path) -> Path:
    return tmp_path / "tokens.json"


def relay(tokens: TokenFile | None, clock: Clock) -> RelayAuth:
    keys = {"ops-1": entry(API), "reader": entry(READER, frozenset({"sign"}))}
    return RelayAuth(tokens, keys, StampVerifier(ReplayMemory(16, clock), clock=clock))


def sent(*pairs: tuple[str, str]) -> dict[str, str]:
    """Headers as the server hands them to the relay (http_envelope.header_map)."""
    return header_map((name.encode("latin-1"), value.encode("latin-1")) for name, value in pairs)


def refusal(auth: RelayAuth, headers: list[tuple[str, str]], scope: str = "sign") -> RelayError:
    with pytest.raises(RelayError) as caught:
        auth.authenticate("POST", PATH, sent(*headers), BODY, scope)
    return caught.value


@pytest.mark.process
def test_tokens_are_stored_hashed_and_printed_once(tokens_path: Path) -> None:
    record, token = add_token(tokens_path, "ci-bot", frozenset({"sign", "read"}))
    text = tokens_path.read_text()
    assert token not in text
    assert token.split("_")[2] not in text
    assert json.loads(text)["tokens"][0]["name"] == "ci-bot"
    assert oct(tokens_path.stat().st_mode & 0o777) == "0o600"
    identity = check_token(read_records(tokens_path), token)
    assert identity is not None
    assert (identity.name, identity.scopes) == ("ci-bot", frozenset({"sign", "read"}))
    altered = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert check_token(read_records(tokens_path), altered) is None
    assert check_token(read_records(tokens_path), "nwt_" + record.token_id) is None


def test_a_revoked_token_stops_working_without_a_restart(tokens_path: Path) -> None:
    record, token = add_token(tokens_path, "ci-bot", frozenset({"sign"}))
    ticker = Ticker()
    live = TokenFile(tokens_path, clock=ticker)
    assert live.check(token) is not None
    revoke_token(tokens_path, record.token_id)
    ticker.now += 1.5
    assert live.check(token) is None


def test_an_invalid_token_file_refuses_every_token(tokens_path: Path) -> None:
    _, token = add_token(tokens_path, "ci-bot", frozenset({"sign"}))
    ticker = Ticker()
    live = TokenFile(tokens_path, clock=ticker)
    tokens_path.write_text('{"version": 2, "tokens": []}')
    os.utime(tokens_path, ns=(1, 1))
    ticker.now += 2
    assert live.check(token) is None


@pytest.mark.parametrize(
    "document",
    [
        {"version": 1},
        {"version": 1, "tokens": [{"id": "x"}]},
        {
            "version": 1,
            "tokens": [
                {"id": "0" * 12, "name": "a b", "scopes": [], "sha256": "0" * 64, "created": ""}
            ],
        },
        {
            "version": 1,
            "tokens": [
                {
                    "id": "0" * 12,
                    "name": "a",
                    "scopes": ["admin"],
                    "sha256": "0" * 64,
                    "created": "",
                }
            ],
        },
    ],
)
def test_a_malformed_token_file_is_refused(tokens_path: Path, document: object) -> None:
    tokens_path.write_text(json.dumps(document))
    with pytest.raises(TokenFileError):
        read_records(tokens_path)


def test_no_credentials_is_401_with_www_authenticate(tokens_path: Path) -> None:
    error = refusal(relay(TokenFile(tokens_path), Clock()), [])
    assert (error.status, error.code) == (401, "unauthenticated")
    assert error.headers["WWW-Authenticate"] == 'Bearer realm="nitro-wallet"'


@pytest.mark.parametrize("value", ["Bearer nwt_000000000000_" + "A" * 43, "Basic abc", "Bearer"])
def test_a_bad_token_is_401_invalid_token(tokens_path: Path, value: str) -> None:
    add_token(tokens_path, "ci-bot", frozenset({"sign"}))
    error = refusal(relay(TokenFile(tokens_path), Clock()), [("Authorization", value)])
    assert (error.status, error.code) == (401, "invalid_token")
    assert 'error="invalid_token"' in error.headers["WWW-Authenticate"]


def test_a_token_reaches_the_enclave_as_a_relay_asserted_identity(tokens_path: Path) -> None:
    _, token = add_token(tokens_path, "ci-bot", frozenset({"sign", "read"}))
    auth = relay(TokenFile(tokens_path), Clock())
    grant = auth.authenticate(
        "POST", PATH, sent(("authorization", f"bearer {token}")), BODY, "sign"
    )
    assert grant.enclave_auth == {"relay": {"principal": "ci-bot", "scopes": ["read", "sign"]}}
    assert token not in json.dumps(grant.enclave_auth)
    with_approvals = auth.authenticate(
        "POST",
        PATH,
        sent(("Authorization", f"Bearer {token}"), ("X-Approvals", "v1.a.1.x")),
        BODY,
        "sign",
    )
    assert with_approvals.enclave_auth is not None
    assert with_approvals.enclave_auth["request"] == {
        "method": "POST",
        "path": PATH,
        "body": BODY.decode(),
    }


def test_a_token_without_the_scope_is_403(tokens_path: Path) -> None:
    _, token = add_token(tokens_path, "viewer", frozenset({"read"}))
    error = refusal(relay(TokenFile(tokens_path), Clock()), [("Authorization", f"Bearer {token}")])
    assert (error.status, error.code) == (403, "scope_denied")


def test_a_stamp_goes_to_the_enclave_untouched_with_the_exact_request() -> None:
    clock = Clock()
    stamp = make_stamp(API, "POST", PATH, BODY, timestamp=int(clock.now))
    grant = relay(None, clock).authenticate("POST", PATH, sent(("X-Stamp", stamp)), BODY, "sign")
    assert grant.enclave_auth == {
        "request": {"method": "POST", "path": PATH, "body": BODY.decode()},
        "stamp": stamp,
    }


def test_a_read_only_stamp_is_verified_by_the_relay() -> None:
    clock = Clock()
    auth = relay(None, clock)
    good = make_stamp(API, "GET", "/v1/accounts?limit=5", b"", timestamp=int(clock.now))
    grant = auth.authenticate("GET", "/v1/accounts?limit=5", sent(("X-Stamp", good)), b"", "read")
    assert (grant.kind, grant.name, grant.enclave_auth) == ("stamp", "ops-1", None)
    with pytest.raises(RelayError) as caught:
        auth.authenticate("GET", "/v1/accounts?limit=5", sent(("X-Stamp", good)), b"", "read")
    assert (caught.value.status, caught.value.code) == (401, "stamp_replayed")
    other_query = make_stamp(API, "GET", "/v1/accounts?limit=5", b"", timestamp=int(clock.now))
    with pytest.raises(RelayError) as caught:
        auth.authenticate(
            "GET", "/v1/accounts?limit=6", sent(("X-Stamp", other_query)), b"", "read"
        )
    assert caught.value.code == "stamp_signature_invalid"
    no_read = make_stamp(READER, "GET", "/v1/accounts", b"", timestamp=int(clock.now))
    with pytest.raises(RelayError) as caught:
        auth.authenticate("GET", "/v1/accounts", sent(("X-Stamp", no_read)), b"", "read")
    assert (caught.value.status, caught.value.code) == (403, "scope_denied")


def test_a_malformed_or_repeated_stamp_is_refused_at_the_relay() -> None:
    auth = relay(None, Clock())
    assert refusal(auth, [("X-Stamp", "v1.nope")]).code == "stamp_malformed"
    assert refusal(auth, [("X-Stamp", "a"), ("x-stamp", "b")]).status == 400
    repeated_token = [("Authorization", "Bearer a"), ("authorization", "Bearer b")]
    assert refusal(auth, repeated_token).status == 400
