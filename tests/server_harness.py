"""Start a real pyxapi daemon as a subprocess for end-to-end tests (loopback only)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT_PASSWORD = "test-root-pw"
READER = ("reader", "reader-pw")  # a read-only account, for RBAC tests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Daemon:
    data_dir: Path
    port: int
    tls_port: int
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    hypervisor: str = "sim"
    network: str = "sim"
    netns: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def tls_url(self) -> str:
        return f"https://127.0.0.1:{self.tls_port}/"

    def start(self, timeout: float = 60.0) -> None:
        env = dict(os.environ, PYXAPI_ROOT_PASSWORD=ROOT_PASSWORD, PYTHONUNBUFFERED="1")
        if not (self.data_dir / "accounts.json").exists():
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pyxapi.main",
                    "passwd",
                    READER[0],
                    "--role",
                    "read-only",
                    "--data-dir",
                    str(self.data_dir),
                ],
                env=dict(env, PYXAPI_PASSWORD=READER[1]),
                check=True,
                capture_output=True,
            )
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"
        log = open(self.log_path, "ab")  # noqa: SIM115 - the daemon owns it while it runs
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pyxapi.main",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--tls-port",
                str(self.tls_port),
                "--data-dir",
                str(self.data_dir),
                "--hypervisor",
                self.hypervisor,
                "--network",
                self.network,
                *(["--netns", self.netns] if self.netns else []),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pyxapi exited early:\n{self.log_path.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"pyxapi did not listen within {timeout}s:\n{self.log_path.read_text()}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)


def new_daemon(tmp: Path, hypervisor: str = "sim", network: str = "sim", netns: str | None = None) -> Daemon:
    return Daemon(tmp / "data", free_port(), free_port(), hypervisor=hypervisor, network=network, netns=netns)
