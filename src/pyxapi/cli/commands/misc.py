"""event-wait, console, messages, secrets, subjects, diagnostics and the smaller object
constructors."""

from __future__ import annotations

import contextlib
import os
import sys

from pyxapi.cli.argv import STD_PARAMS
from pyxapi.cli.errors import ApiFailure, CliFailure, XeExit
from pyxapi.cli.files import read_file
from pyxapi.cli.records import NULL, CliRecord
from pyxapi.cli.selectors import select
from pyxapi.cli.table import class_names, class_spec

TYPE_CHECKING = False
if TYPE_CHECKING:
    from _socket import socket as Socket

    from pyxapi.cli.ctx import Ctx

EVENT_TIMEOUT = 30.0


def event_wait(c: Ctx) -> None:
    """Wait until an object of class= (vm, host, sr, ...) has every field=value given
    (field=/=value: differs from value), then return."""
    cli = c.req("class")
    if cli not in class_names():
        raise CliFailure(f"Cli listening for class '{cli}' not currently implemented")
    spec = class_spec(cli)
    wanted = []
    for key, value in c.params.items():
        if key == "class" or key in STD_PARAMS:
            continue
        negate = value.startswith("/=")
        wanted.append((key, value[2:] if negate else value, negate))
    for key, _, _ in wanted:
        if key not in spec.by_name:
            raise CliFailure(f"key missing: {key}")

    def matches(r: CliRecord) -> bool:
        return all((r.get(spec.by_name[k]) != v) if neg else (r.get(spec.by_name[k]) == v) for k, v, neg in wanted)

    token = ""
    while True:
        reply = c.call("event.from", [spec.api.lower()], token, EVENT_TIMEOUT)
        token = reply["token"]
        c.resolver.records.clear()  # related objects (metrics) may have changed too
        for ev in reply["events"]:
            snap = ev.get("snapshot")
            if ev.get("operation") == "del" or not snap:
                continue
            if matches(CliRecord(spec, str(ev["ref"]), snap, c.resolver)):
                return


def _relay(sock: Socket, fd_in: int, fd_out: int) -> None:
    import select

    while True:
        ready, _, _ = select.select([sock.fileno(), fd_in], [], [])
        if fd_in in ready:
            data = os.read(fd_in, 65536)
            if not data:
                return
            if b"\x1d" in data:  # Ctrl-]
                head = data[: data.index(b"\x1d")]
                if head:
                    sock.sendall(head)
                return
            sock.sendall(data)
        if sock.fileno() in ready:
            data = sock.recv(65536)
            if not data:
                return
            os.write(fd_out, data)


def console(c: Ctx) -> None:
    """Attach to the selected VM's text (serial) console; press Ctrl-] to leave."""
    found = select(c, "vm", include_control=True)
    if not found:
        c.printer.stderr("No VM found\n")
        raise XeExit(1)
    if len(found) > 1:
        c.printer.stderr("Multiple VMs found: please narrow your request to one VM.\n")
        raise XeExit(1)
    vm = found[0]
    text = [cons for cons in vm.rec["consoles"] if c.call("console.get_protocol", cons) == "vt100"]
    if not text:
        c.printer.stderr("No text console available\n")
        raise XeExit(1)
    from pyxapi.cli.connection import HttpConnection

    c.printer.msg(f"Connecting to console on VM {vm.rec['name_label']}. Press Ctrl + ']' to quit.")
    sys.stdout.flush()
    conn = HttpConnection(c.api.rpc.endpoint)
    sock, reader = conn._connect()
    sock.sendall(f"CONNECT /console?ref={text[0]}&session_id={c.api.session} HTTP/1.0\r\n\r\n".encode())
    from pyxapi.cli.connection import Response

    resp = Response(sock, reader, "CONNECT")
    if resp.status == 404:
        c.printer.stderr("Server replied with HTTP 404: the console is not available\n")
        raise XeExit(1)
    if resp.status != 200:
        c.printer.stderr(f"Server said: HTTP {resp.status} {resp.reason}\n")
        raise XeExit(1)
    if reader.buf:
        os.write(sys.stdout.fileno(), reader.buf)
        reader.buf = b""
    saved = None
    if sys.stdin.isatty():
        import termios
        import tty

        saved = termios.tcgetattr(sys.stdin.fileno())
        tty.setraw(sys.stdin.fileno())
    try:
        _relay(sock, sys.stdin.fileno(), sys.stdout.fileno())
    finally:
        if saved is not None:
            import termios

            termios.tcsetattr(sys.stdin.fileno(), termios.TCSANOW, saved)
            print("\r")
        conn.close()


_MESSAGE_OWNERS = (("vm-uuid", "VM"), ("pool-uuid", "Pool"), ("sr-uuid", "SR"), ("host-uuid", "Host"))


def message_create(c: Ctx) -> None:
    """Create a message about one object (vm-uuid=, host-uuid=, sr-uuid= or pool-uuid=):
    name=, priority= (a number), body=."""
    try:
        priority = int(c.req("priority"))
    except ValueError:
        raise CliFailure("Priority field should be an integer") from None
    owner = next(((c.req(k), cls) for k, cls in _MESSAGE_OWNERS if c.has(k)), None)
    if owner is None:
        raise CliFailure("Need one of: vm-uuid, host-uuid, sr-uuid or pool-uuid")
    c.call("message.create", c.req("name"), priority, owner[1], owner[0], c.req("body"))


def message_destroy(c: Ctx) -> None:
    """Destroy the message uuid=, or the messages uuids=a,b,c."""
    if c.has("uuid"):
        c.call("message.destroy", c.by_uuid("message", c.req("uuid")))
    if c.has("uuids"):
        refs = [c.by_uuid("message", u) for u in c.req("uuids").split(",") if u]
        c.call("message.destroy_many", refs)


def message_destroy_all(c: Ctx) -> None:
    """Destroy every message, or those matching all of before=, after=, priority=."""
    filters = {k: c.req(k) for k in ("before", "after", "priority") if c.has(k)}
    c.call("message.destroy_all", filters)


def secret_create(c: Ctx) -> None:
    """Store a secret value= and print its uuid."""
    ref = c.call("secret.create", {"value": c.req("value"), "other_config": {}})
    c.printer.lines([c.uuid_of("secret", ref)])


def blob_create(c: Ctx) -> None:
    """Create a blob name= on one object (vm-uuid=, pool-uuid=, sr-uuid=, host-uuid=,
    network-uuid=), with mime-type= and public=; prints its uuid."""
    owners = (
        ("vm-uuid", "VM"),
        ("pool-uuid", "pool"),
        ("sr-uuid", "SR"),
        ("host-uuid", "host"),
        ("network-uuid", "network"),
    )
    for key, cls in owners:
        if c.has(key):
            obj = c.by_uuid(cls, c.req(key))
            blob = c.call(f"{cls}.create_new_blob", obj, c.req("name"), c.opt("mime-type", ""), c.flag("public"))
            c.printer.lines([c.uuid_of("blob", blob)])
            return
    raise CliFailure("Need one of: vm-uuid, host-uuid, network-uuid, sr-uuid or pool-uuid")


def subject_add(c: Ctx) -> None:
    """Give an external user or group (subject-name=) access; prints the subject's uuid."""
    sid = c.call("auth.get_subject_identifier", c.req("subject-name"))
    info = c.call("auth.get_subject_information_from_identifier", sid)
    ref = c.call("subject.create", {"subject_identifier": sid, "other_config": info})
    c.printer.lines([c.uuid_of("subject", ref)])


def _role(c: Ctx) -> str:
    if c.has("role-uuid"):
        return c.by_uuid("role", c.req("role-uuid"))
    if c.has("role-name"):
        found = c.call("role.get_by_name_label", c.req("role-name"))
        if not found:
            raise CliFailure(f"Role {c.req('role-name')} not found")
        return str(found[0])
    raise CliFailure("Required parameter not found: role-uuid or role-name")


def subject_role_add(c: Ctx) -> None:
    """Give the subject (uuid=) a role (role-name= or role-uuid=)."""
    c.call("subject.add_to_roles", c.by_uuid("subject", c.req("uuid")), _role(c))


def subject_role_remove(c: Ctx) -> None:
    """Take a role (role-name= or role-uuid=) from the subject (uuid=)."""
    c.call("subject.remove_from_roles", c.by_uuid("subject", c.req("uuid")), _role(c))


def session_subject_identifier_logout_all(c: Ctx) -> None:
    """Log out every session of every external subject."""
    for sid in c.call("session.get_all_subject_identifiers"):
        c.call("session.logout_subject_identifier", sid)


def diagnostic_vm_status(c: Ctx) -> None:
    """Show what may stop the VM (uuid=) from starting: its disks and each host's verdict."""
    vm = c.by_uuid("VM", c.req("uuid"))
    spec = class_spec("vm")
    rec = CliRecord(spec, vm, c.call("VM.get_record", vm), c.resolver)
    shown = [f for f in spec.fields if f.name in ("uuid", "name-label", "power-state", "possible-hosts")]
    c.printer.table([rec.printed(shown)])
    c.printer.lines(["Checking to see whether disks are attachable"])
    vbd_spec = class_spec("vbd")
    names = ("uuid", "userdevice", "device", "vdi-uuid", "empty", "mode", "type", "storage-lock", "attachable")
    vbd_fields = [f for f in vbd_spec.fields if f.name in names]
    for vbd in rec.rec["VBDs"]:
        c.printer.table([CliRecord(vbd_spec, vbd, c.call("VBD.get_record", vbd), c.resolver).printed(vbd_fields)])
    c.printer.lines(["Checking to see whether VM can boot on each host"])
    verdicts = []
    for host in c.call("host.get_all"):
        try:
            c.call("VM.assert_can_boot_here", vm, host)
            verdict = "OK"
        except ApiFailure as e:
            verdict = f"Cannot start here [{e.code}]"
        verdicts.append((c.resolver.name("host", host), verdict))
    c.printer.table([verdicts])
    try:
        c.call("VM.assert_agile", vm)
        c.printer.lines(["VM is agile."])
    except ApiFailure as e:
        c.printer.lines([f"VM is not agile because: {e.code}"])


def diagnostic_vdi_status(c: Ctx) -> None:
    """Show the disk (uuid=) and the VBDs using it, attached or not."""
    vdi = c.by_uuid("VDI", c.req("uuid"))
    spec = class_spec("vdi")
    rec = CliRecord(spec, vdi, c.call("VDI.get_record", vdi), c.resolver)
    names = ("uuid", "name-label", "sr-uuid", "mode", "read-only", "sharable", "storage-lock")
    c.printer.table([rec.printed([f for f in spec.fields if f.name in names])])
    vbd_spec = class_spec("vbd")
    vbd_names = ("uuid", "userdevice", "device", "empty", "mode", "type", "storage-lock")
    vbd_fields = [f for f in vbd_spec.fields if f.name in vbd_names]
    vbds = [CliRecord(vbd_spec, v, c.call("VBD.get_record", v), c.resolver) for v in rec.rec["VBDs"]]
    active = [v for v in vbds if v.rec["currently_attached"]]
    inactive = [v for v in vbds if not v.rec["currently_attached"]]
    if active:
        c.printer.lines(["active VBDs:"])
        for v in active:
            c.printer.table([v.printed(vbd_fields)])
    else:
        c.printer.lines(["no active VBDs."])
    if inactive:
        c.printer.lines(["inactive VBDs:"])
        for v in inactive:
            c.printer.table([v.printed(vbd_fields)])


def _license_status(c: Ctx) -> None:
    """Print each host's edition and license expiry."""
    rows = []
    for rec in c.call("host.get_all_records").values():
        params = rec.get("license_params") or {}
        rows.append(
            [
                ("uuid", str(rec["uuid"])),
                ("hostname", str(rec["hostname"])),
                ("edition", str(rec["edition"])),
                ("expiry", str(params.get("expiry", ""))),
            ]
        )
    c.printer.table(rows)


def _appliance_shutdown(c: Ctx) -> None:
    """Shut the appliance's VMs down in order (--force: at once)."""
    appliance = c.by_uuid("VM_appliance", c.req("uuid"))
    c.call("VM_appliance.hard_shutdown" if c.flag("force") else "VM_appliance.clean_shutdown", appliance)


def _update_on_host(method: str, doc: str):  # type: ignore[no-untyped-def]
    def handler(c: Ctx) -> None:
        from pyxapi.cli.selectors import do_op

        update = c.by_uuid("pool_update", c.req("uuid"))

        def op(h: CliRecord) -> None:
            result = c.call(f"pool_update.{method}", update, h.ref)
            if result not in (None, ""):
                c.printer.lines([str(result)])

        do_op(c, "host", op, ["uuid"])

    handler.__doc__ = doc
    return handler


def _create(cls: str, build, doc: str):  # type: ignore[no-untyped-def]
    """An implicit constructor taking a record; prints the new object's uuid."""

    def handler(c: Ctx) -> None:
        c.printer.lines([c.uuid_of(cls, c.call(f"{cls}.create", build(c)))])

    handler.__doc__ = doc
    return handler


def _names(c: Ctx) -> dict[str, str]:
    return {"name_label": c.req("name-label"), "name_description": c.opt("name-description", "") or ""}


def vgpu_create(c: Ctx) -> None:
    """Give vm-uuid= a virtual GPU from gpu-group-uuid= (vgpu-type-uuid=, device=)."""
    vgpu_type = c.by_uuid("VGPU_type", c.req("vgpu-type-uuid")) if c.has("vgpu-type-uuid") else NULL
    ref = c.call(
        "VGPU.create",
        c.by_uuid("VM", c.req("vm-uuid")),
        c.by_uuid("GPU_group", c.req("gpu-group-uuid")),
        c.opt("device", "0"),
        {},
        vgpu_type,
    )
    c.printer.lines([c.uuid_of("VGPU", ref)])


def vusb_create(c: Ctx) -> None:
    """Give vm-uuid= a virtual USB device from usb-group-uuid=."""
    ref = c.call("VUSB.create", c.by_uuid("VM", c.req("vm-uuid")), c.by_uuid("USB_group", c.req("usb-group-uuid")), {})
    c.printer.lines([c.uuid_of("VUSB", ref)])


def gpu_group_create(c: Ctx) -> None:
    """Create a GPU group (name-label=, name-description=); prints its uuid."""
    ref = c.call("GPU_group.create", c.req("name-label"), c.opt("name-description", ""), {})
    c.printer.lines([c.uuid_of("GPU_group", ref)])


def pvs_cache_storage_create(c: Ctx) -> None:
    """Give the selected host PVS cache storage on sr-uuid= of size= for pvs-site-uuid=."""
    from pyxapi.cli.ctx import parse_bytes

    def op(h: CliRecord) -> None:
        record = {
            "host": h.ref,
            "SR": c.by_uuid("SR", c.req("sr-uuid")),
            "site": c.by_uuid("PVS_site", c.req("pvs-site-uuid")),
            "size": parse_bytes("size", c.req("size")),
        }
        c.printer.lines([c.uuid_of("PVS_cache_storage", c.call("PVS_cache_storage.create", record))])

    from pyxapi.cli.selectors import do_op

    do_op(c, "host", op, ["sr-uuid", "pvs-site-uuid", "size"], multiple=False)


def repository_introduce_remote_pool(c: Ctx) -> None:
    """Add the remote pool at binary-url= (its certificate in certificate-file=) as an update
    repository; prints its uuid."""
    cert = read_file(c, "certificate-file")
    ref = c.call(
        "Repository.introduce_remote_pool",
        c.req("name-label"),
        c.opt("name-description", ""),
        c.req("binary-url"),
        cert,
    )
    c.printer.lines([c.uuid_of("Repository", ref)])


def caller_query_usage(c: Ctx) -> None:
    """Print a caller's (uuid=) or a group's (group=) API usage."""
    if c.has("uuid"):
        caller = c.by_uuid("Caller", c.req("uuid"))
        c.printer.lines(
            [str(c.call("Caller.query_token_usage", caller)), str(c.call("Caller.query_call_count", caller))]
        )
    elif c.has("group"):
        g = c.req("group")
        c.printer.lines(
            [str(c.call("Caller.query_group_token_usage", g)), str(c.call("Caller.query_group_call_count", g))]
        )
    else:
        raise CliFailure("Required parameter not found: uuid or group")


def _recovery(method: str, cls: str, doc: str):  # type: ignore[no-untyped-def]
    def handler(c: Ctx) -> None:
        database = dict(c.params.prefixed("database"))
        if "vdi-uuid" not in database:
            raise CliFailure(
                "A parameter of the form 'database:vdi-uuid=<uuid>' must be specified to run this command."
            )
        db_session = c.call("VDI.open_database", c.by_uuid("VDI", database["vdi-uuid"]))
        try:
            obj = c.api.rpc.call(f"{cls}.get_by_uuid", [db_session, c.req("uuid")])
            args = [db_session, obj, c.api.session] + ([c.flag("force")] if method == "recover" else [])
            c.api.rpc.call(f"{cls}.{method}", args)
        finally:
            with contextlib.suppress(ApiFailure):
                c.api.rpc.call("session.logout", [db_session])

    handler.__doc__ = doc
    return handler


COMMANDS = {
    "event-wait": event_wait,
    "console": console,
    "message-create": message_create,
    "message-destroy": message_destroy,
    "message-destroy-all": message_destroy_all,
    "secret-create": secret_create,
    "blob-create": blob_create,
    "subject-add": subject_add,
    "subject-role-add": subject_role_add,
    "subject-role-remove": subject_role_remove,
    "session-subject-identifier-logout-all": session_subject_identifier_logout_all,
    "diagnostic-vm-status": diagnostic_vm_status,
    "diagnostic-vdi-status": diagnostic_vdi_status,
    "vgpu-create": vgpu_create,
    "vusb-create": vusb_create,
    "gpu-group-create": gpu_group_create,
    "pvs-cache-storage-create": pvs_cache_storage_create,
    "repository-introduce-remote-pool": repository_introduce_remote_pool,
    "caller-query-usage": caller_query_usage,
    "appliance-create": _create("VM_appliance", _names, "Create a VM appliance (name-label=); prints its uuid."),
    "appliance-shutdown": _appliance_shutdown,
    "vm-group-create": _create(
        "VM_group",
        lambda c: {**_names(c), "placement": c.req("placement")},
        "Create a VM group (name-label=, placement=); prints its uuid.",
    ),
    "caller-create": _create(
        "Caller",
        lambda c: {
            "name_label": c.opt("name-label", "") or "",
            "name_description": c.opt("name-description", "") or "",
            "user_agent": c.opt("user-agent", "") or "",
            "client_ip": c.opt("client-ip", "") or "",
        },
        "Create a caller record for rate limiting; prints its uuid.",
    ),
    "rate-limit-create": _create(
        "Rate_limit",
        lambda c: {
            "name_label": c.opt("name-label", "") or "",
            "name_description": c.opt("name-description", "") or "",
            "burst_size": float(c.req("burst-size")),
            "fill_rate": float(c.req("fill-rate")),
        },
        "Create a rate limit (burst-size=, fill-rate=); prints its uuid.",
    ),
    "observer-create": _create(
        "Observer",
        lambda c: {
            **_names(c),
            "hosts": [c.by_uuid("host", u) for u in (c.opt("host-uuids") or "").split(",") if u],
            "enabled": c.flag("enabled"),
            "attributes": dict(kv.split("=", 1) for kv in (c.opt("attributes") or "").split(",") if "=" in kv),
            "endpoints": [e for e in (c.opt("endpoints") or "").split(",") if e],
            "components": [e for e in (c.opt("components") or "").split(",") if e],
        },
        "Create a tracing observer (name-label=, host-uuids=, endpoints=, components=); prints its uuid.",
    ),
    "vm-assert-can-be-recovered": _recovery(
        "assert_can_be_recovered",
        "VM",
        "Check the VM (uuid=) in a recovered database (database:vdi-uuid=) can be recovered.",
    ),
    "vm-recover": _recovery("recover", "VM", "Recover the VM (uuid=) from the database on database:vdi-uuid=."),
    "appliance-assert-can-be-recovered": _recovery(
        "assert_can_be_recovered", "VM_appliance", "Check the appliance (uuid=) can be recovered."
    ),
    "appliance-recover": _recovery("recover", "VM_appliance", "Recover the appliance (uuid=) from database:vdi-uuid=."),
    "vmss-create": _create(
        "VMSS",
        lambda c: {
            **_names(c),
            "type": c.req("type"),
            "frequency": c.req("frequency"),
            "schedule": dict(c.params.prefixed("schedule")),
            "retained_snapshots": int(c.opt("retained-snapshots", "7") or 7),
            "enabled": c.flag("enabled", True),
        },
        "Create a snapshot schedule: name-label=, type=snapshot|checkpoint|snapshot_with_quiesce, "
        "frequency=hourly|daily|weekly, schedule:key=value, retained-snapshots=; prints its uuid.",
    ),
    "diagnostic-license-status": _license_status,
    "update-apply": _update_on_host("apply", "Apply the update (uuid=) to the selected host."),
    "update-precheck": _update_on_host("precheck", "Check the update (uuid=) against the selected host."),
}
