"""CPU time of a QEMU process as the QEMU driver reads it from the host: precise to the
nanosecond (an idle guest's QEMU may use less than one 10 ms clock tick between two samples),
monotonic, and counting threads that have already exited."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

from pyxapi.drivers.hypervisor.qemu_host import cpu_time_ns

_SPIN_THEN_SLEEP = """
import sys, threading, time
def spin():
    end = time.process_time() + 0.05
    while time.process_time() < end:
        pass
t = threading.Thread(target=spin); t.start(); t.join()   # this thread is gone afterwards
sys.stdout.write("ready\\n"); sys.stdout.flush()
time.sleep(60)
"""


def _burn(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_process_time_counts_exited_threads_and_is_stable_when_idle() -> None:
    child = subprocess.Popen([sys.executable, "-c", _SPIN_THEN_SLEEP], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        first = cpu_time_ns(child.pid)
        assert first >= 50_000_000  # the exited thread's 50 ms are still counted
        time.sleep(0.2)
        assert first <= cpu_time_ns(child.pid) < first + 50_000_000  # sleeping: barely moves
    finally:
        child.kill()
        child.wait()
    assert cpu_time_ns(child.pid) == 0  # gone: no error, nothing


def test_sub_tick_work_is_seen() -> None:
    before = cpu_time_ns(os.getpid())
    _burn(0.002)  # a fifth of a clock tick
    assert cpu_time_ns(os.getpid()) - before >= 2_000_000


def test_thread_time_in_nanoseconds() -> None:
    seen: dict[str, int] = {}
    started, stop = threading.Event(), threading.Event()

    def worker() -> None:
        seen["tid"] = threading.get_native_id()
        started.set()
        _burn(0.002)
        seen["after"] = 1
        stop.wait(10)

    t = threading.Thread(target=worker)
    t.start()
    started.wait(10)
    try:
        while "after" not in seen:
            time.sleep(0.001)
        assert cpu_time_ns(os.getpid(), seen["tid"]) >= 2_000_000
        assert cpu_time_ns(os.getpid(), 2**22 + 12345) == 0  # no such thread
    finally:
        stop.set()
        t.join()
