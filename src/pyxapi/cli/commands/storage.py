"""Storage commands with more to them than one call: sr-create/-introduce/-probe, vdi-create/
-clone/-copy/-resize/-introduce, vbd-create/-unplug, pbd-create."""

from __future__ import annotations

import time

from pyxapi.cli.commands.vm_devices import vbd_record
from pyxapi.cli.ctx import parse_bytes
from pyxapi.cli.errors import ApiFailure, CliFailure
from pyxapi.cli.records import NULL

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pyxapi.cli.ctx import Ctx

VDI_TYPES = ("system", "user", "suspend", "crashdump", "ephemeral", "ha_statefile", "metadata", "redo_log", "rrd")


def _host(c: Ctx, default_master: bool) -> str:
    """host-uuid=, else the coordinator (for shared SRs, or when the pool has one host)."""
    if c.has("host-uuid"):
        return c.by_uuid("host", c.req("host-uuid"))
    if default_master or len(c.call("host.get_all")) == 1:
        return str(c.call("pool.get_master", c.pool()))
    raise CliFailure("Required parameter not found: host-uuid")


def _device_config(c: Ctx) -> dict[str, str]:
    config = dict(c.params.prefixed("device-config"))
    out = {}
    for key, value in config.items():
        if key.endswith("-filename"):  # device-config:key-filename=FILE passes the file's contents
            try:
                with open(value) as f:
                    out[key[: -len("-filename")]] = f.read()
            except OSError:
                c.printer.stderr(f"File not found: {value}")
                raise CliFailure("File not found") from None
        else:
            out[key] = value
    return out


def sr_create(c: Ctx) -> None:
    """Create an SR: name-label=, type= (file, iso, ...), device-config:key=value,
    shared=, physical-size=, content-type=, sm-config:key=value, host-uuid=. Prints its uuid."""
    shared = c.flag("shared")
    host = _host(c, default_master=shared)
    size = parse_bytes("physical-size", c.req("physical-size")) if c.has("physical-size") else 0
    sr = c.call(
        "SR.create",
        host,
        _device_config(c),
        size,
        c.req("name-label"),
        c.opt("name-description", ""),
        c.req("type"),
        c.opt("content-type", ""),
        shared,
        dict(c.params.prefixed("sm-config")),
    )
    c.printer.msg(c.uuid_of("SR", sr))


def sr_introduce(c: Ctx) -> None:
    """Make an existing SR known (uuid=, name-label=, type=, content-type=, shared=); plug it
    afterwards with pbd-create and pbd-plug."""
    uuid = c.req("uuid")
    c.call(
        "SR.introduce",
        uuid,
        c.req("name-label"),
        c.opt("name-description", ""),
        c.req("type"),
        c.opt("content-type", ""),
        c.flag("shared"),
        dict(c.params.prefixed("sm-config")),
    )
    c.printer.lines([uuid])


def sr_probe(c: Ctx) -> None:
    """Ask an SR driver (type=) what it finds with device-config:key=value."""
    host = _host(c, default_master=True)
    text = c.call("SR.probe", host, _device_config(c), c.req("type"), dict(c.params.prefixed("sm-config")))
    c.printer.lines([str(text)])


def sr_probe_ext(c: Ctx) -> None:
    """Ask an SR driver (type=) what it finds, as records."""
    host = _host(c, default_master=True)
    found = c.call("SR.probe_ext", host, _device_config(c), c.req("type"), dict(c.params.prefixed("sm-config")))
    rows = []
    for r in found:
        rows.append([(str(k), v if isinstance(v, str) else str(v)) for k, v in r.items()])
    c.printer.table(rows)


def pbd_create(c: Ctx) -> None:
    """Create a PBD joining host-uuid= to sr-uuid= with device-config:key=value; prints its uuid."""
    record = {
        "host": c.by_uuid("host", c.req("host-uuid")),
        "SR": c.by_uuid("SR", c.req("sr-uuid")),
        "device_config": dict(c.params.prefixed("device-config")),
        "other_config": {},
    }
    c.printer.lines([c.uuid_of("PBD", c.call("PBD.create", record))])


def vdi_create(c: Ctx) -> None:
    """Create an empty disk: sr-uuid=, name-label=, virtual-size= (e.g. 10GiB), type=user,
    sharable=, sm-config:key=value, tags:=a,b. Prints its uuid."""
    kind = c.opt("type", "user") or "user"
    if kind not in VDI_TYPES:
        raise CliFailure(f"Unknown vdi type: {kind}")
    record = {
        "name_label": c.req("name-label"),
        "name_description": "",
        "SR": c.by_uuid("SR", c.req("sr-uuid")),
        "virtual_size": c.size("virtual-size"),
        "type": kind,
        "sharable": c.flag("sharable"),
        "read_only": False,
        "other_config": {},
        "xenstore_data": {},
        "sm_config": dict(c.params.prefixed("sm-config")),
        "tags": [k for k, _ in c.params.prefixed("tags")],
    }
    c.printer.lines([c.uuid_of("VDI", c.call("VDI.create", record))])


def vdi_clone(c: Ctx) -> None:
    """Clone the disk (uuid=), copy-on-write where the SR can; new-name-label=,
    new-name-description=. Prints the clone's uuid."""
    vdi = c.by_uuid("VDI", c.req("uuid"))
    new = c.call("VDI.clone", vdi, dict(c.params.prefixed("driver-params")))
    if c.has("new-name-label"):
        c.call("VDI.set_name_label", new, c.req("new-name-label"))
    if c.has("new-name-description"):
        c.call("VDI.set_name_description", new, c.req("new-name-description"))
    c.printer.lines([c.uuid_of("VDI", new)])


def vdi_copy(c: Ctx) -> None:
    """Copy the disk (uuid=) to a new disk in sr-uuid=, or into the existing into-vdi-uuid=.
    Prints the destination's uuid."""
    vdi = c.by_uuid("VDI", c.req("uuid"))
    base = c.by_uuid("VDI", c.req("base-vdi-uuid")) if c.has("base-vdi-uuid") else NULL
    if c.has("sr-uuid") == c.has("into-vdi-uuid"):
        raise CliFailure(
            "Please specify one but not both of: a destination sr-uuid (I will create a fresh VDI); or a destination"
            " into-vdi-uuid (I will copy the blocks into this VDI)"
        )
    sr = c.by_uuid("SR", c.req("sr-uuid")) if c.has("sr-uuid") else NULL
    into = c.by_uuid("VDI", c.req("into-vdi-uuid")) if c.has("into-vdi-uuid") else NULL
    c.printer.lines([c.uuid_of("VDI", c.call("VDI.copy", vdi, sr, base, into))])


def vdi_resize(c: Ctx) -> None:
    """Grow the disk (uuid=) to disk-size=; online=true for a disk in use by a running VM."""
    vdi = c.by_uuid("VDI", c.req("uuid"))
    size = parse_bytes("disk-size", c.req("disk-size"))
    c.call("VDI.resize_online" if c.opt("online") == "true" else "VDI.resize", vdi, size)


def vdi_introduce(c: Ctx) -> None:
    """Make an existing disk image known to its SR: uuid=, sr-uuid=, type=, location=."""
    kind = c.req("type")
    if kind not in VDI_TYPES:
        raise CliFailure(f"Unknown vdi type: {kind}")
    vdi = c.call(
        "VDI.introduce",
        c.req("uuid"),
        c.opt("name-label", ""),
        c.opt("name-description", ""),
        c.by_uuid("SR", c.req("sr-uuid")),
        kind,
        c.flag("sharable"),
        c.flag("read-only"),
        dict(c.params.prefixed("other-config")),
        c.req("location"),
        dict(c.params.prefixed("xenstore-data")),
        dict(c.params.prefixed("sm-config")),
        c.flag("managed"),
        0,
        0,
        NULL,
        False,
        "19700101T00:00:00Z",
        NULL,
    )
    c.printer.lines([c.uuid_of("VDI", vdi)])


def vbd_create(c: Ctx) -> None:
    """Create a virtual block device: vm-uuid=, device=, vdi-uuid= (none: an empty CD drive),
    type=Disk|CD, mode=RW|RO, bootable=, unpluggable=. Prints its uuid."""
    vm = c.by_uuid("VM", c.req("vm-uuid"))
    vdi = c.by_uuid("VDI", c.req("vdi-uuid")) if c.has("vdi-uuid") else NULL
    mode = (c.opt("mode") or "rw").lower()
    if mode not in ("ro", "rw"):
        raise CliFailure(f'Unknown mode: {mode} (should be "ro" or "rw"')
    kind = (c.opt("type") or "disk").lower()
    if kind not in ("cd", "disk", "floppy"):
        raise CliFailure(f'Unknown type: {kind} (should be "cd" or "disk"')
    if kind == "disk" and vdi == NULL:
        raise CliFailure("Empty VBDs can only be made for type=CD")
    record = vbd_record(vm, vdi, c.req("device"), mode.upper(), {"cd": "CD", "disk": "Disk", "floppy": "Floppy"}[kind])
    record["bootable"] = c.flag("bootable")
    record["unpluggable"] = c.flag("unpluggable", True)
    c.printer.lines([c.uuid_of("VBD", c.call("VBD.create", record))])


def vbd_unplug(c: Ctx) -> None:
    """Hot-unplug the device (uuid=) from its running VM; --force skips the guest's consent,
    timeout= waits that long if the guest refuses at first."""
    vbd = c.by_uuid("VBD", c.req("uuid"))
    timeout = 0.0
    if c.has("timeout"):
        try:
            timeout = float(c.req("timeout"))
        except ValueError:
            raise CliFailure("Failed to parse parameter 'timeout': expecting a float") from None
    start = time.monotonic()
    try:
        c.call("VBD.unplug_force" if c.flag("force") else "VBD.unplug", vbd)
    except ApiFailure as e:
        if e.code != "DEVICE_DETACH_REJECTED":
            raise
        while time.monotonic() - start < timeout:
            time.sleep(1.0)
            if not c.call("VBD.get_currently_attached", vbd):
                return
        raise


COMMANDS = {
    "sr-create": sr_create,
    "sr-introduce": sr_introduce,
    "sr-probe": sr_probe,
    "sr-probe-ext": sr_probe_ext,
    "pbd-create": pbd_create,
    "vdi-create": vdi_create,
    "vdi-clone": vdi_clone,
    "vdi-copy": vdi_copy,
    "vdi-resize": vdi_resize,
    "vdi-introduce": vdi_introduce,
    "vbd-create": vbd_create,
    "vbd-unplug": vbd_unplug,
}
