"""The relay as a process (``python -m parent_app --config``) with its stderr read by
a thread that is joined when the process exits."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.fake_enclave import (
    KEY_ID,
    FakeEnclave,
    FakeImds,
    auth_sections,
    remove_tree,
    short_tempdir,
)

ROOT = Path(__file__).resolve().parent.parent


class RelayProcess:
    """``python -m parent_app --config CONFIG`` (or another ``command``, such as an
    installed ``nitro-wallet-relay``); ``port`` once it listens."""

    def __init__(
        self,
        config: Path,
        command: Sequence[str] = (sys.executable, "-m", "parent_app"),
        cwd: Path = ROOT,
    ) -> None:
        self.process = subprocess.Popen(
            [*command, "--config", str(config)],
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._port: int | None = None
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(20) or self._port is None:
            self.process.kill()
            self.wait(10)
            raise AssertionError("relay did not start:\n" + self.log)

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            found = re.search(r"relay listening on 127\.0\.0\.1:(\d+)", line)
            if found:
                self._port = int(found.group(1))
                self._ready.set()
        self._ready.set()

    @property
    def port(self) -> int:
        assert self._port is not None
        return self._port

    def wait(self, timeout: float) -> int:
        """Wait for the exit, then for the reader to drain stderr to its end."""
        code = self.process.wait(timeout)
        self._reader.join(timeout)
        assert not self._reader.is_alive(), "stderr was not closed after the relay exited"
        return code

    @property
    def log(self) -> str:
        """Everything the relay wrote to stderr so far (complete after ``wait``)."""
        return "".join(self.lines)


def write_config(
    tmp_path: Path, enclave: FakeEnclave, imds: FakeImds, db_dir: Path | None = None
) -> Path:
    """relay.toml on a free port against the fakes; the database in ``db_dir``."""
    config = tmp_path / "relay.toml"
    state = db_dir or tmp_path / "db"
    sections = auth_sections(tmp_path / "relay-auth")
    config.write_text(
        '[relay]\nlisten_host = "127.0.0.1"\nlisten_port = 0\nlog_level = "DEBUG"\n'
        f'[enclave]\ntransport = "{enclave.transport_spec}"\ncid = 16\nport = 5000\n'
        f'[kms]\nkey_id = "{KEY_ID}"\n'
        f'[storage]\nsqlite_path = "{state / "accounts.db"}"\n'
        f'[credentials]\nimds_endpoint = "{imds.endpoint}"\n'
        f'[auth]\ntokens_file = "{sections["auth"]["tokens_file"]}"\n'
        f'[audit]\nlog_path = "{sections["audit"]["log_path"]}"\n'
    )
    return config


@contextlib.contextmanager
def fake_edges() -> Iterator[tuple[FakeEnclave, FakeImds]]:
    """A framed fake enclave and a fake IMDS for a relay process to talk to."""
    vsock = short_tempdir()
    enclave = FakeEnclave(vsock).start()
    imds = FakeImds().start()
    try:
        yield enclave, imds
    finally:
        imds.stop()
        enclave.stop()
        remove_tree(vsock)
