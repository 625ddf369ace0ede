"""NSM client and simulated NSM over a real unix socket; the simulator CA on disk."""

from __future__ import annotations

import ctypes
import socket
import stat
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cbor2
import pytest

from enclave_app.errors import EnclaveError, ErrorCode
from enclave_app.nsm import (
    NSM_IOCTL,
    DeviceNsm,
    IoVec,
    NsmMessage,
    SocketNsm,
    attestation_request,
    decode_response,
    describe_pcr_request,
    get_random_request,
    nsm_from_environment,
)
from nitro_sim.ca import CaError, SimCa
from nitro_sim.nsm import NsmServer, SimulatedNsm
from nitro_wallet.attestation import verify_attestation
from tests.simhelpers import make_ca

REPO = Path(__file__).resolve().parents[1]
PCR0 = bytes(range(48))


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> SimCa:
    return make_ca(tmp_path_factory.mktemp("nsm"))


@pytest.fixture(scope="module")
def sim(ca: SimCa) -> SimulatedNsm:
    return SimulatedNsm(ca, {0: PCR0, 8: b"\x08" * 48}, "i-0sim-enc0sim")


@pytest.fixture
def server(sim: SimulatedNsm, tmp_path: Path) -> Iterator[NsmServer]:
    with sim.serve(tmp_path / "nsm.sock") as srv:
        yield srv


# --- the socket backend against the simulator --------------------------------------------


def test_attest_over_socket_yields_a_verifiable_document(ca: SimCa, server: NsmServer) -> None:
    nsm = SocketNsm(server.path)
    document = nsm.attest(user_data=b"ud", nonce=b"n" * 512, public_key=b"pk" * 10)
    doc = verify_attestation(document, [ca.root_fingerprint])
    assert doc.pcrs[0] == PCR0
    assert doc.pcrs[8] == b"\x08" * 48
    assert doc.pcrs[1] == bytes(48)
    assert len(doc.pcrs) == 16
    assert (doc.user_data, doc.nonce, doc.public_key) == (b"ud", b"n" * 512, b"pk" * 10)
    assert doc.module_id == "i-0sim-enc0sim"
    empty = verify_attestation(
        nsm.attest(user_data=None, nonce=None, public_key=None), [ca.root_fingerprint]
    )
    assert (empty.user_data, empty.nonce, empty.public_key) == (None, None, None)


def test_get_random_and_describe_pcr(server: NsmServer) -> None:
    nsm = SocketNsm(server.path)
    first, second = nsm.get_random(300), nsm.get_random(300)
    assert len(first) == len(second) == 300
    assert first != second
    assert nsm.get_random(0) == b""
    assert nsm.describe_pcr(0) == (True, PCR0)
    assert nsm.describe_pcr(20) == (False, bytes(48))
    with pytest.raises(EnclaveError) as info:
        nsm.describe_pcr(32)
    assert info.value.code is ErrorCode.INVALID_PARAMS


def test_oversized_fields_are_refused_by_the_client(server: NsmServer) -> None:
    nsm = SocketNsm(server.path)
    for kwargs in (
        {"user_data": b"u" * 513, "nonce": None, "public_key": None},
        {"user_data": None, "nonce": b"n" * 513, "public_key": None},
        {"user_data": None, "nonce": None, "public_key": b"k" * 1025},
    ):
        with pytest.raises(EnclaveError) as info:
            nsm.attest(**kwargs)
        assert info.value.code is ErrorCode.INVALID_PARAMS


def raw_exchange(path: Path, payload: bytes) -> object:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(struct.pack(">I", len(payload)) + payload)
        header = sock.recv(4, socket.MSG_WAITALL)
        (length,) = struct.unpack(">I", header)
        return cbor2.loads(sock.recv(length, socket.MSG_WAITALL))


@pytest.mark.parametrize(
    ("request_obj", "error"),
    [
        (
            {"Attestation": {"user_data": b"u" * 513, "nonce": None, "public_key": None}},
            "InvalidArgument",
        ),
        ({"Attestation": {"nonce": b"n" * 513}}, "InvalidArgument"),
        ({"Attestation": {"public_key": b"k" * 1025}}, "InvalidArgument"),
        ({"Attestation": {"nonce": "text"}}, "InvalidArgument"),
        ({"Attestation": {"surprise": b""}}, "InvalidArgument"),
        ({"Attestation": [b""]}, "InvalidArgument"),
        ({"DescribePCR": {"index": 32}}, "InvalidIndex"),
        ({"DescribePCR": {"index": "0"}}, "InvalidArgument"),
        ({"ExtendPCR": {"index": 16, "data": b"x"}}, "InvalidOperation"),
        ("Reboot", "InvalidOperation"),
        ([1, 2], "InvalidOperation"),
    ],
)
def test_simulator_answers_bad_requests_with_nsm_errors(
    server: NsmServer, request_obj: object, error: str
) -> None:
    assert raw_exchange(server.path, cbor2.dumps(request_obj)) == {"Error": error}


def test_simulator_handles_garbage_and_keeps_serving(server: NsmServer, sim: SimulatedNsm) -> None:
    assert cbor2.loads(sim.handle(b"\xff\x00garbage")) == {"Error": "InvalidArgument"}
    assert cbor2.loads(sim.handle(b"\x9f\x01\xff")) == {"Error": "InvalidArgument"}  # indefinite
    # An oversized length prefix: the server drops the connection without reading a body.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(server.path))
        sock.sendall(struct.pack(">I", 1 << 30))
        assert sock.recv(4) == b""
    # Still up, and several requests share one connection.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(server.path))
        for _ in range(3):
            request = get_random_request()
            sock.sendall(struct.pack(">I", len(request)) + request)
            (length,) = struct.unpack(">I", sock.recv(4, socket.MSG_WAITALL))
            assert (
                len(cbor2.loads(sock.recv(length, socket.MSG_WAITALL))["GetRandom"]["random"])
                == 256
            )


def test_concurrent_clients(ca: SimCa, server: NsmServer) -> None:
    results: list[bytes] = []
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            doc = SocketNsm(server.path).attest(
                user_data=None, nonce=i.to_bytes(2, "big"), public_key=None
            )
            results.append(verify_attestation(doc, [ca.root_fingerprint]).nonce or b"")
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert sorted(results) == [i.to_bytes(2, "big") for i in range(12)]


def test_socket_permissions_and_close(sim: SimulatedNsm, tmp_path: Path) -> None:
    path = tmp_path / "sub" / "nsm.sock"
    srv = sim.serve(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    srv.close()
    assert not path.exists()
    with pytest.raises(EnclaveError) as info:
        SocketNsm(path).get_random(8)
    assert info.value.code is ErrorCode.NSM_UNAVAILABLE


def test_missing_socket_is_nsm_unavailable(tmp_path: Path) -> None:
    with pytest.raises(EnclaveError) as info:
        SocketNsm(tmp_path / "absent.sock", timeout=1).attest(
            user_data=None, nonce=None, public_key=None
        )
    assert info.value.code is ErrorCode.NSM_UNAVAILABLE


def test_leaf_is_reused_then_rotated(sim: SimulatedNsm, ca: SimCa) -> None:
    now = datetime.now(UTC)
    first = verify_attestation(sim.attestation_document(now=now), [ca.root_fingerprint], at=now)
    again = verify_attestation(
        sim.attestation_document(now=now + timedelta(minutes=5)), [ca.root_fingerprint]
    )
    later_time = now + timedelta(hours=2)
    later = verify_attestation(
        sim.attestation_document(now=later_time), [ca.root_fingerprint], at=later_time
    )
    assert first.certificate == again.certificate
    assert later.certificate != first.certificate


# --- messages ----------------------------------------------------------------------------


def test_request_messages_match_the_nsm_api() -> None:
    assert cbor2.loads(attestation_request(user_data=b"u", nonce=None, public_key=b"k")) == {
        "Attestation": {"user_data": b"u", "nonce": None, "public_key": b"k"}
    }
    assert cbor2.loads(get_random_request()) == "GetRandom"
    assert cbor2.loads(describe_pcr_request(4)) == {"DescribePCR": {"index": 4}}


@pytest.mark.parametrize(
    "response",
    [
        cbor2.dumps({"Error": "InvalidArgument"}),
        cbor2.dumps({"GetRandom": {"random": b"x"}}),
        cbor2.dumps({"Attestation": b"not a map"}),
        cbor2.dumps({"Attestation": {}, "Error": "x"}),
        b"\xff",
    ],
)
def test_bad_responses_are_nsm_unavailable(response: bytes) -> None:
    with pytest.raises(EnclaveError) as info:
        decode_response(response, "Attestation")
    assert info.value.code is ErrorCode.NSM_UNAVAILABLE


# --- /dev/nsm ----------------------------------------------------------------------------


def test_ioctl_number_and_struct_layout() -> None:
    ioc_write, ioc_read = 1, 2
    expected = ((ioc_read | ioc_write) << 30) | (ctypes.sizeof(NsmMessage) << 16) | (0x0A << 8)
    assert expected == NSM_IOCTL == 0xC0200A00
    assert ctypes.sizeof(IoVec) == 16
    assert ctypes.sizeof(NsmMessage) == 32
    assert NsmMessage.request.offset == 0
    assert NsmMessage.response.offset == 16
    assert IoVec.iov_len.offset == 8


def test_device_missing_or_not_an_nsm(tmp_path: Path) -> None:
    with pytest.raises(EnclaveError) as info:
        DeviceNsm(tmp_path / "nsm").attest(user_data=None, nonce=None, public_key=None)
    assert info.value.code is ErrorCode.NSM_UNAVAILABLE
    assert "cannot open" in info.value.message
    regular = tmp_path / "regular"
    regular.write_bytes(b"")
    with pytest.raises(EnclaveError) as info:
        DeviceNsm(regular).get_random(32)
    assert info.value.code is ErrorCode.NSM_UNAVAILABLE
    assert "ioctl failed" in info.value.message


def test_nsm_from_environment(tmp_path: Path) -> None:
    chosen = nsm_from_environment({"NITRO_SIM_NSM_SOCKET": str(tmp_path / "nsm.sock")})
    assert isinstance(chosen, SocketNsm)
    assert chosen.path == tmp_path / "nsm.sock"
    device = nsm_from_environment({})
    assert isinstance(device, DeviceNsm)
    assert device.path == "/dev/nsm"
    with pytest.raises(EnclaveError) as info:
        nsm_from_environment({"NITRO_SIM_NSM_SOCKET": ""})
    assert info.value.code is ErrorCode.NSM_UNAVAILABLE


# --- the simulator CA --------------------------------------------------------------------


def test_ca_is_created_once_with_private_keys_0600(tmp_path: Path) -> None:
    directory = tmp_path / "ca"
    first = SimCa.load_or_create(directory)
    second = SimCa.load_or_create(directory)
    assert first.root_fingerprint == second.root_fingerprint
    assert first.root_pem.startswith(b"-----BEGIN CERTIFICATE-----")
    for name in ("root.key", "intermediate.key"):
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600
    assert "CN=nitro-sim root" in first.root.subject.rfc4514_string()
    now = datetime.now(UTC)
    leaf, _ = first.issue_leaf(now)
    assert leaf.not_valid_before_utc == (now - timedelta(minutes=1)).replace(microsecond=0)
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == timedelta(hours=3)


def test_partial_or_mismatched_ca_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "ca"
    SimCa.load_or_create(directory)
    (directory / "root.key").unlink()
    with pytest.raises(CaError, match="partial"):
        SimCa.load_or_create(directory)
    other = tmp_path / "other"
    SimCa.load_or_create(other)
    (directory / "root.key").write_bytes((other / "root.key").read_bytes())
    (directory / "intermediate.key").write_bytes((other / "intermediate.key").read_bytes())
    with pytest.raises(CaError, match="does not match"):
        SimCa.load_or_create(directory)


@pytest.mark.process
def test_concurrent_processes_create_one_ca(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from nitro_sim.ca import SimCa; "
        "print(SimCa.load_or_create(Path(sys.argv[1])).root_fingerprint)"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path / "ca")],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = {proc.communicate(timeout=60)[0].strip() for proc in procs}
    assert all(proc.returncode == 0 for proc in procs)
    assert len(outputs) == 1
    assert len(outputs.pop()) == 64
