"""kill -9 the daemon while clients write concurrently: every acknowledged write survives."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import XenAPI

from tests.server_harness import ROOT_PASSWORD, new_daemon

WRITERS = 4
WRITE_SECONDS = 3.0


def test_acknowledged_writes_survive_kill_9(tmp_path: Path) -> None:
    daemon = new_daemon(tmp_path)
    daemon.start()
    acked: dict[str, int] = {}  # VM uuid -> last acknowledged counter written into its name
    created: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def writer(n: int) -> None:
        s = XenAPI.Session(daemon.url)
        s.xenapi.login_with_password("root", ROOT_PASSWORD)
        i = 0
        try:
            while not stop.is_set():
                vm = s.xenapi.VM.create({"name_label": f"w{n}-0", "other_config": {"writer": str(n)}})
                uuid = s.xenapi.VM.get_uuid(vm)
                with lock:
                    created.append(uuid)
                    acked[uuid] = 0
                for i in range(1, 6):
                    s.xenapi.VM.set_name_label(vm, f"w{n}-{i}")
                    with lock:
                        acked[uuid] = i
        except Exception:
            pass  # the daemon was killed under us: whatever was acknowledged is recorded

    threads = [threading.Thread(target=writer, args=(n,), daemon=True) for n in range(WRITERS)]
    for t in threads:
        t.start()
    time.sleep(WRITE_SECONDS)
    daemon.kill()  # SIGKILL mid-write
    stop.set()
    for t in threads:
        t.join(timeout=30)
    with lock:
        expected = dict(acked)
    assert len(expected) > 10, "the writers made too few writes to prove anything"

    daemon.start()
    try:
        s = XenAPI.Session(daemon.url)
        s.xenapi.login_with_password("root", ROOT_PASSWORD)
        records = {r["uuid"]: r for r in s.xenapi.VM.get_all_records().values()}
        for uuid, counter in expected.items():
            assert uuid in records, f"acknowledged VM {uuid} lost"
            writer, got = records[uuid]["name_label"][1:].split("-")
            assert int(got) >= counter, f"VM {uuid}: acknowledged write {counter} lost (found {got})"
    finally:
        daemon.stop()
