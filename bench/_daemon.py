"""The frame of a benchmark that drives one real daemon with the QEMU driver and the project's
test guest: a private directory under /tmp, the guest's kernel and initrd where the daemon's
templates look for them, the daemon's log tail when the run fails, and every QEMU the run started
killed at the end (by the marker in their command lines: the private directory's path).

Callers put the repository root on sys.path first (they run as scripts).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from types import FrameType
from typing import Any

from tests.server_harness import Daemon, new_daemon

from bench._vm import build_test_guest, kill_leftover_domains

Emit = Callable[[str], None]
Body = Callable[[Daemon, Path, Emit], Coroutine[Any, Any, None]]


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # run the clean-up below, as for ^C


def _emit(text: str) -> None:
    print(text, flush=True)


def run_on_qemu_daemon(title: str, prefix: str, body: Body) -> int:
    """Print `title` with the machine's figures, run `body(daemon, work_dir, emit)` and clean up.
    `prefix` names the private directory: keep it short (QEMU's unix socket paths live there)."""
    signal.signal(signal.SIGTERM, _sigterm)
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    daemon: Daemon | None = None
    try:
        _emit(
            f"{title}: python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
            f"load {os.getloadavg()[0]:.2f} at start"
        )
        kernel, initrd = build_test_guest()
        guest_dir = tmp / "data" / "images" / "test-guest"
        guest_dir.mkdir(parents=True)
        shutil.copy(kernel, guest_dir / "vmlinuz")
        shutil.copy(initrd, guest_dir / "initrd.img")
        work = tmp / "work"
        work.mkdir()
        daemon = new_daemon(tmp, hypervisor="qemu")
        daemon.start()
        asyncio.run(body(daemon, work, _emit))
    except Exception:
        if daemon is not None and daemon.log_path is not None and daemon.log_path.exists():
            tail = daemon.log_path.read_text(errors="replace").splitlines()[-30:]
            print("daemon log (last lines):\n" + "\n".join(tail), file=sys.stderr)
        raise
    finally:
        if daemon is not None:
            try:
                daemon.stop()
            except Exception:
                daemon.kill()
        kill_leftover_domains(tmp / "data" / "run" / "qemu", str(tmp))
        shutil.rmtree(tmp, ignore_errors=True)
    _emit(f"\ndone in {time.perf_counter() - started:.0f} s (load {os.getloadavg()[0]:.2f})")
    return 0
