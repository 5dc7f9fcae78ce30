"""Storage, network, host, pool, task, event, message and secret commands against a real daemon."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import XenAPI

from tests.cli.conftest import Xe, records


def test_sr_lifecycle(xe: Xe, api: XenAPI.Session, tmp_path: Path) -> None:
    where = tmp_path / "sr-a"
    sr = xe.one("sr-create", "name-label=extra", "type=file", f"device-config:location={where}")
    [rec] = records(xe.ok("sr-list", f"uuid={sr}", "params=all"))
    assert rec["name-label"] == "extra" and rec["type"] == "file" and rec["shared"] == "false"
    pbd = xe.one("pbd-list", f"sr-uuid={sr}", "--minimal")
    assert xe.one("pbd-param-get", f"uuid={pbd}", "param-name=device-config", "param-key=location") == str(where)
    vdi = xe.one("vdi-create", f"sr-uuid={sr}", "name-label=d1", "virtual-size=8MiB")
    xe.ok("sr-scan", f"uuid={sr}")
    r = xe("sr-destroy", f"uuid={sr}")
    assert r.rc == 1 and r.err  # PBD still plugged: xapi's error, as xe prints it
    xe.ok("vdi-destroy", f"uuid={vdi}")
    xe.ok("pbd-unplug", f"uuid={pbd}")
    xe.ok("sr-destroy", f"uuid={sr}")
    assert sr not in xe.one("sr-list", "--minimal")
    # introduce and forget keep the data
    again = xe.one("sr-create", "name-label=kept", "type=file", f"device-config:location={tmp_path / 'sr-b'}")
    pbd = xe.one("pbd-list", f"sr-uuid={again}", "--minimal")
    xe.ok("pbd-unplug", f"uuid={pbd}")
    xe.ok("sr-forget", f"uuid={again}")
    assert xe.one("sr-introduce", f"uuid={again}", "name-label=kept", "type=file") == again
    host = xe.one("host-list", "--minimal")
    pbd = xe.one("pbd-create", f"host-uuid={host}", f"sr-uuid={again}", f"device-config:location={tmp_path / 'sr-b'}")
    xe.ok("pbd-plug", f"uuid={pbd}")
    assert xe.one("pbd-param-get", f"uuid={pbd}", "param-name=currently-attached") == "true"


def test_vdi_and_vbd_commands(xe: Xe, api: XenAPI.Session) -> None:
    sr = xe.one("sr-list", "name-label=Local storage", "--minimal")
    vdi = xe.one("vdi-create", f"sr-uuid={sr}", "name-label=work", "virtual-size=16MiB", "sm-config:k=v")
    assert xe.one("vdi-param-get", f"uuid={vdi}", "param-name=sm-config", "param-key=k") == "v"
    clone = xe.one("vdi-clone", f"uuid={vdi}", "new-name-label=work-clone")
    snap = xe.one("vdi-snapshot", f"uuid={vdi}")
    copy = xe.one("vdi-copy", f"uuid={vdi}", f"sr-uuid={sr}")
    assert len({vdi, clone, snap, copy}) == 4
    assert xe.one("vdi-param-get", f"uuid={clone}", "param-name=name-label") == "work-clone"
    assert xe.one("vdi-param-get", f"uuid={snap}", "param-name=is-a-snapshot") == "true"
    xe.ok("vdi-resize", f"uuid={vdi}", "disk-size=32MiB")
    assert xe.one("vdi-param-get", f"uuid={vdi}", "param-name=virtual-size") == str(32 << 20)
    r = xe("vdi-copy", f"uuid={vdi}")
    assert r.rc == 1 and r.err.startswith("Error: Please specify one but not both")
    vm = xe.one("vm-install", "template=pyxapi test guest", "new-name-label=vbd-host")
    vbd = xe.one("vbd-create", f"vm-uuid={vm}", f"vdi-uuid={vdi}", "device=4", "mode=RO")
    assert xe.one("vbd-param-get", f"uuid={vbd}", "param-name=mode") == "RO"
    r = xe("vbd-plug", f"uuid={vbd}")  # a halted VM cannot take a hot-plug
    assert r.rc == 1 and r.err.splitlines()[0] == "The VM is not in the power state this operation needs."
    xe.ok("vm-start", f"uuid={vm}")
    xe.ok("vbd-unplug", f"uuid={vbd}")
    assert xe.one("vbd-param-get", f"uuid={vbd}", "param-name=currently-attached") == "false"
    xe.ok("vbd-plug", f"uuid={vbd}")
    assert xe.one("vbd-param-get", f"uuid={vbd}", "param-name=currently-attached") == "true"
    xe.ok("vm-shutdown", f"uuid={vm}", "--force")
    cd = xe.one("vbd-create", f"vm-uuid={vm}", "device=3", "type=CD", "mode=RO")
    assert xe.one("vbd-param-get", f"uuid={cd}", "param-name=empty") == "true"
    r = xe("vbd-create", f"vm-uuid={vm}", "device=6")
    assert (r.rc, r.err) == (1, "Error: Empty VBDs can only be made for type=CD\n")
    xe.ok("vbd-destroy", f"uuid={vbd}")
    for v in (clone, snap, copy):
        xe.ok("vdi-destroy", f"uuid={v}")


def test_network_commands(xe: Xe, api: XenAPI.Session) -> None:
    net = xe.one("network-create", "name-label=lab", "MTU=1400")
    assert xe.one("network-param-get", f"uuid={net}", "param-name=MTU") == "1400"
    vm = xe.one("vm-install", "template=pyxapi test guest", "new-name-label=nic-host")
    vif = xe.one("vif-create", f"vm-uuid={vm}", f"network-uuid={net}", "device=1", "mac=random")
    mac = xe.one("vif-param-get", f"uuid={vif}", "param-name=MAC")
    assert int(mac.split(":")[0], 16) & 2  # a locally administered address
    assert xe.one("vif-list", f"MAC={mac.upper()}", "--minimal") == vif  # MAC matches any case
    assert vif in xe.one("network-param-get", f"uuid={net}", "param-name=VIF-uuids")
    xe.ok("vif-destroy", f"uuid={vif}")
    xe.ok("network-destroy", f"uuid={net}")
    assert net not in xe.one("network-list", "--minimal")
    for cmd in (
        ["pif-scan", f"host-uuid={xe.one('host-list', '--minimal')}"],
        ["network-attach", "uuid=x", "host-uuid=y"],
    ):
        r = xe(*cmd)
        assert r.rc in (0, 1)  # runs and, when it fails, says why in xe's words
        if r.rc:
            assert r.err


def test_host_and_pool_commands(xe: Xe, api: XenAPI.Session) -> None:
    host = xe.one("host-list", "--minimal")
    [rec] = records(xe.ok("host-param-list", f"uuid={host}"))
    assert rec["enabled"] == "true" and int(rec["memory-total"]) > 0
    xe.ok("host-disable")
    assert xe.one("host-param-get", f"uuid={host}", "param-name=enabled") == "false"
    xe.ok("host-enable", f"host={rec['name-label']}")
    assert xe.one("host-param-get", f"uuid={host}", "param-name=enabled") == "true"
    assert int(xe.one("host-compute-free-memory")) > 0
    assert xe.ok("host-dmesg") != ""
    pool = xe.one("pool-list", "--minimal")
    [prec] = records(xe.ok("pool-param-list", f"uuid={pool}"))
    assert prec["master"] == host
    xe.ok("pool-param-set", f"uuid={pool}", "name-label=lab-pool")
    assert xe.one("pool-list", "params=name-label", "--minimal") == "lab-pool"
    r = xe("pool-join", "master-address=192.0.2.1", "master-username=root", "master-password=x")
    assert r.rc == 1 and r.err
    r = xe("pool-designate-new-master", "host-uuid=00000000-0000-0000-0000-000000000000")
    assert r.rc == 1 and r.err.splitlines()[0] == "No object with this uuid exists."


def test_tasks_events_messages_secrets(xe: Xe, api: XenAPI.Session) -> None:
    task = api.xenapi.task.create("long job", "from a test")
    uuid = api.xenapi.task.get_uuid(task)
    assert uuid in xe.one("task-list", "--minimal").split(",")
    [rec] = records(xe.ok("task-list", f"uuid={uuid}"))
    assert rec["name-label"] == "long job" and rec["status"] == "pending"
    xe.ok("task-cancel", f"uuid={uuid}")
    assert api.xenapi.task.get_status(task) in ("cancelling", "cancelled")
    # event-wait returns once a VM matches, here after a change made by someone else
    vm = xe.one("vm-install", "template=pyxapi test guest", "new-name-label=waited")
    later = threading.Timer(1.0, lambda: api.xenapi.VM.set_name_description(api.xenapi.VM.get_by_uuid(vm), "ready"))
    later.start()
    started = time.monotonic()
    xe.ok("event-wait", "class=vm", "name-label=waited", "name-description=ready")
    assert time.monotonic() - started >= 0.5
    xe.ok("event-wait", "class=vm", "name-label=waited", "power-state=/=running")  # already true
    r = xe("event-wait", "class=vm", "no-such-field=1")
    assert (r.rc, r.err) == (1, "Error: key missing: no-such-field\n")
    pool = xe.one("pool-list", "--minimal")
    xe.ok("message-create", "name=HELLO", "priority=3", f"pool-uuid={pool}", "body=hi there")
    [msg] = records(xe.ok("message-list", "name=HELLO"))
    assert msg["priority"] == "3" and msg["obj-uuid"] == pool and msg["body"] == "hi there"
    xe.ok("message-destroy", f"uuid={msg['uuid']}")
    assert xe.one("message-list", "name=HELLO", "--minimal") == ""
    r = xe("message-create", "name=X", "priority=high", "body=b", f"pool-uuid={pool}")
    assert (r.rc, r.err) == (1, "Error: Priority field should be an integer\n")
    secret = xe.one("secret-create", "value=s3cret")
    assert xe.one("secret-param-get", f"uuid={secret}", "param-name=value") == "s3cret"
    xe.ok("secret-destroy", f"uuid={secret}")
