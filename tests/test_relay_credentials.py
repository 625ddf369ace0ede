"""IMDSv2 role credentials through botocore's fetcher: caching, refresh, failure modes."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from parent_app.credentials import REFRESH_MARGIN_SECONDS, Credentials, ImdsCredentialSource
from parent_app.errors import CredentialsUnavailable
from tests.fake_enclave import FakeImds, refusing_port


@pytest.fixture
def imds() -> Iterator[FakeImds]:
    server = FakeImds().start()
    yield server
    server.stop()


def test_fetches_role_credentials_over_imdsv2(imds: FakeImds) -> None:
    creds = ImdsCredentialSource(imds.endpoint, 2).get()
    assert creds == Credentials(
        imds.state.access_key_id, imds.state.secret_access_key, imds.state.session_token
    )
    assert imds.state.tokens  # a session token was requested: IMDSv2


def test_repr_hides_secret_and_token(imds: FakeImds) -> None:
    creds = ImdsCredentialSource(imds.endpoint, 2).get()
    for text in (repr(creds), str(creds), f"{creds}", repr([creds])):
        assert imds.state.secret_access_key not in text
        assert imds.state.session_token not in text
        assert imds.state.access_key_id in text


def test_cached_until_close_to_expiry_then_refreshed(imds: FakeImds) -> None:
    now = [time.time()]
    source = ImdsCredentialSource(imds.endpoint, 2, clock=lambda: now[0])
    first = source.get()
    assert source.get() is first
    assert imds.state.credential_fetches == 1
    imds.state.rotate()
    lifetime = imds.state.lifetime.total_seconds()
    now[0] += lifetime - REFRESH_MARGIN_SECONDS - 60
    assert source.get() is first  # still well within validity
    now[0] += 120  # inside the refresh margin
    second = source.get()
    assert second != first
    assert second.secret_access_key == imds.state.secret_access_key
    assert imds.state.credential_fetches == 2


def test_valid_cached_credentials_survive_an_imds_outage(imds: FakeImds) -> None:
    now = [time.time()]
    source = ImdsCredentialSource(imds.endpoint, 1, clock=lambda: now[0])
    first = source.get()
    imds.stop()
    now[0] += imds.state.lifetime.total_seconds() - 60  # refresh due, IMDS gone, still valid
    assert source.get() is first
    now[0] += 120  # now expired
    with pytest.raises(CredentialsUnavailable):
        source.get()


def test_unreachable_imds_is_credentials_unavailable() -> None:
    with refusing_port() as port:
        source = ImdsCredentialSource(f"http://127.0.0.1:{port}", 1)
        started = time.monotonic()
        with pytest.raises(CredentialsUnavailable) as caught:
            source.get()
    assert caught.value.status == 503
    assert caught.value.code == "credentials_unavailable"
    assert time.monotonic() - started < 5


def test_no_fallback_to_imdsv1(imds: FakeImds) -> None:
    imds.state.refuse_tokens = True  # this IMDS would serve credentials without a token
    with pytest.raises(CredentialsUnavailable):
        ImdsCredentialSource(imds.endpoint, 2).get()
    assert imds.state.credential_fetches == 0


def test_concurrent_callers_share_one_fetch(imds: FakeImds) -> None:
    source = ImdsCredentialSource(imds.endpoint, 2)
    results: list[Credentials] = []
    barrier = threading.Barrier(16)

    def fetch() -> None:
        barrier.wait()
        results.append(source.get())

    threads = [threading.Thread(target=fetch) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 16
    assert len(set(results)) == 1
    assert imds.state.credential_fetches == 1


def test_nothing_secret_is_logged(imds: FakeImds, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    source = ImdsCredentialSource(imds.endpoint, 2)
    source.get()
    for secret in imds.state.secrets:
        assert secret not in caplog.text


def test_against_the_simulator_imds(tmp_path: Path) -> None:
    imds_module = pytest.importorskip("nitro_sim.imds")
    principals = pytest.importorskip("nitro_sim.principals")
    with imds_module.serve_imds(tmp_path, "127.0.0.1", 0) as server:
        creds = ImdsCredentialSource(server.url, 2).get()
    expected = principals.Principals.load(tmp_path).role_credentials()
    assert creds.access_key_id == expected.access_key_id
    assert creds.secret_access_key == expected.secret_access_key
    assert creds.session_token == expected.session_token
