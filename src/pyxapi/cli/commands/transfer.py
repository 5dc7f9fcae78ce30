"""Commands that move files: vm-export/-import, vdi-export/-import, template/snapshot export,
blob-get/-put and the host/pool dumps, streamed through the daemon's HTTP handlers."""

from __future__ import annotations

from pyxapi.cli.errors import CliFailure, XeExit
from pyxapi.cli.records import CliRecord
from pyxapi.cli.selectors import do_op
from pyxapi.cli.table import class_spec
from pyxapi.cli.tasks import refs_in
from pyxapi.cli.transfer import Transfer

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pyxapi.cli.ctx import Ctx

DRY_RUN_UUID = "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"


def _say(c: Ctx, text: str) -> None:
    """xe prints these straight to the terminal, --minimal or not."""
    c.printer.out.write(text + "\n")


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _export(c: Ctx, vm: CliRecord, filename: str) -> None:
    metadata = c.flag("metadata")
    snapshots = c.flag("include-snapshots", metadata)
    t = Transfer(c, f"Export of VM: {vm.rec['uuid']}")
    query = t.query(
        uuid=str(vm.rec["uuid"]),
        use_compression=_bool(c.flag("compress")),
        preserve_power_state=_bool(c.flag("preserve-power-state")),
        export_snapshots=_bool(snapshots),
    )
    if c.has("excluded-device-types"):
        query["excluded_device_types"] = c.req("excluded-device-types")
    t.download("/export_metadata" if metadata else "/export", query, filename)
    if filename:
        _say(c, "Export succeeded")


def vm_export(c: Ctx) -> None:
    """Export the selected VM(s) as XVA file(s) to filename= (several VMs: filename, filename2,
    ...): --compress, --metadata (no disks), preserve-power-state=, include-snapshots=."""
    filename = c.req("filename")
    count = [0]

    def op(vm: CliRecord) -> None:
        count[0] += 1
        _export(c, vm, filename if count[0] == 1 else f"{filename}{count[0]}")

    do_op(
        c,
        "vm",
        op,
        [
            "filename",
            "metadata",
            "compress",
            "preserve-power-state",
            "include-snapshots",
            "excluded-device-types",
            "progress",
        ],
        include_templates=True,
    )


def _export_kind(c: Ctx, kind: str) -> None:
    uuid = c.req(f"{kind}-uuid")
    ref = c.by_uuid("VM", uuid)
    check = "VM.get_is_a_template" if kind == "template" else "VM.get_is_a_snapshot"
    if not c.call(check, ref):
        raise CliFailure(f"This operation can only be performed on a VM {kind}. {uuid} is not a VM {kind}.")
    _export(c, CliRecord(class_spec("vm"), ref, c.call("VM.get_record", ref), c.resolver), c.req("filename"))


def template_export(c: Ctx) -> None:
    """Export the template template-uuid= as an XVA file to filename=."""
    _export_kind(c, "template")


def snapshot_export_to_template(c: Ctx) -> None:
    """Export the snapshot snapshot-uuid= as a template XVA file to filename=."""
    _export_kind(c, "snapshot")


def vm_import(c: Ctx) -> None:
    """Import VMs from an XVA (or OVA) file filename= into sr-uuid= (or the pool's default SR):
    --preserve keeps the MAC addresses and uuids, --force ignores checksum errors, --metadata
    imports a metadata-only export (with --dry-run to check it). url= imports from a URL
    instead. Prints the new VMs' uuids."""
    if c.has("url") and c.has("filename"):
        c.printer.stderr("Invalid arguments. The 'url' and 'filename' parameters should not both be specified.\n")
        raise XeExit(1)
    if c.has("sr-uuid"):
        sr = c.by_uuid("SR", c.req("sr-uuid"))
    else:
        default = c.default_sr()
        if default is None:
            raise CliFailure("No SR specified and Pool default SR is null")
        sr = default
    restore, force = c.flag("preserve"), c.flag("force")
    if c.has("url"):
        vms = c.call("VM.import", c.req("url"), sr, restore, force)
        _say(c, ",".join(c.uuid_of("VM", v) for v in vms))
        return
    metadata, dry_run = c.flag("metadata"), c.flag("dry-run")
    if dry_run and not metadata:
        c.printer.stderr("Only metadata import function support dry-run\n")
        raise XeExit(1)
    t = Transfer(c, "VM import")
    query = t.query(restore=_bool(restore), force=_bool(force), dry_run=_bool(dry_run), sr_id=sr)
    for vdi, target in c.params.prefixed("vdi"):
        query[f"vdi:{vdi}"] = target
    result = t.upload("/import_metadata" if metadata else "/import", query, c.req("filename"))
    uuids = [c.uuid_of("VM", r) for r in refs_in(result)]
    _say(c, ",".join(uuids or ([DRY_RUN_UUID] if dry_run else [])))


def vdi_import(c: Ctx) -> None:
    """Write the disk image filename= (format=raw|vhd|qcow2, raw by default) into the disk
    uuid=. A progress bar shows on a terminal (--progress forces it)."""
    vdi = c.by_uuid("VDI", c.req("uuid"))
    t = Transfer(c, "VDI import")
    query = t.query(vdi=vdi)
    if c.has("format"):
        query["format"] = c.req("format")
    t.upload("/import_raw_vdi", query, c.req("filename"))


def vdi_export(c: Ctx) -> None:
    """Save the disk uuid= to filename= (format=raw|vhd|qcow2; base= for the differences
    from another disk)."""
    vdi = c.by_uuid("VDI", c.req("uuid"))
    t = Transfer(c, "VDI export")
    query = t.query(vdi=vdi)
    for key in ("format", "base"):
        if c.has(key):
            query[key] = c.req(key)
    t.download("/export_raw_vdi", query, c.req("filename"))


def _download(path: str, label: str, file_key: str, doc: str, **fixed: str):  # type: ignore[no-untyped-def]
    def handler(c: Ctx) -> None:
        t = Transfer(c, label)
        query = t.query(**fixed)
        if c.has("since"):
            query["since"] = c.req("since")
        filename = c.opt(file_key, "") or ""
        t.download(path, query, filename)
        if filename:
            _say(c, f"{label} succeeded")

    handler.__doc__ = doc
    return handler


def _upload(path: str, label: str, file_key: str, doc: str):  # type: ignore[no-untyped-def]
    def handler(c: Ctx) -> None:
        t = Transfer(c, label)
        query = t.query()
        if c.has("dry-run"):
            query["dry_run"] = _bool(c.flag("dry-run"))
        t.upload(path, query, c.req(file_key))

    handler.__doc__ = doc
    return handler


def _upload_patch(kind: str, cls: str, doc: str):  # type: ignore[no-untyped-def]
    def handler(c: Ctx) -> None:
        t = Transfer(c, f"{kind} upload")
        query = t.query()
        if c.has("sr-uuid"):
            query["sr_id"] = c.by_uuid("SR", c.req("sr-uuid"))
        result = t.upload("/pool_patch_upload", query, c.req("file-name"))
        c.print_uuids(cls, refs_in(result))

    handler.__doc__ = doc
    return handler


def pool_sync_bundle(c: Ctx) -> None:
    """Upload the update bundle filename= to the pool's bundle repository."""
    t = Transfer(c, "Pool sync bundle")
    t.upload("/bundle", t.query(), c.req("filename"))


def pool_retrieve_wlb_report(c: Ctx) -> None:
    """Save the workload-balancing report report= (extra key=value report parameters) to
    filename= (stdout without one)."""
    t = Transfer(c, f"WLB report: {c.req('report')}")
    skip = {"report", "filename", "server", "username", "password", "port", "minimal"}
    query = t.query(report=c.req("report"), **{k: v for k, v in c.params.items() if k not in skip})
    filename = c.opt("filename", "") or ""
    t.download("/wlb_report", query, filename)
    if filename:
        _say(c, "Report generation succeeded")


def blob_get(c: Ctx) -> None:
    """Save the blob uuid= to filename=."""
    blob = c.by_uuid("blob", c.req("uuid"))
    t = Transfer(c, f"Obtaining blob, ref={blob}")
    t.download("/blob", t.query(ref=blob), c.req("filename"))
    _say(c, "Blob get succeeded")


def blob_put(c: Ctx) -> None:
    """Upload filename= into the blob uuid=."""
    blob = c.by_uuid("blob", c.req("uuid"))
    t = Transfer(c, f"Blob PUT, ref={blob}")
    t.upload("/blob", t.query(ref=blob), c.req("filename"))
    _say(c, "Blob put succeeded")


COMMANDS = {
    "vm-export": vm_export,
    "vm-import": vm_import,
    "template-export": template_export,
    "snapshot-export-to-template": snapshot_export_to_template,
    "vdi-import": vdi_import,
    "vdi-export": vdi_export,
    "blob-get": blob_get,
    "blob-put": blob_put,
    "pool-dump-database": _download(
        "/pool/xmldbdump", "Database dump", "file-name", "Save the pool database to file-name=."
    ),
    "pool-restore-database": _upload(
        "/pool/xmldbdump", "Database restore", "file-name", "Restore the pool database from file-name= (dry-run=)."
    ),
    "host-backup": _download("/host_backup", "Host backup", "file-name", "Save the host's state to file-name=."),
    "host-restore": _upload("/host_restore", "Host restore", "file-name", "Restore a host backup from file-name=."),
    "host-logs-download": _download(
        "/host_logs_download", "Host logs download", "file-name", "Download the host's logs to file-name=."
    ),
    "patch-upload": _upload_patch("Patch", "pool_patch", "Upload the update file file-name=; prints its uuid."),
    "update-upload": _upload_patch(
        "Update", "pool_update", "Upload the update ISO file-name= (into sr-uuid=); prints its uuid."
    ),
    "pool-sync-bundle": pool_sync_bundle,
    "pool-retrieve-wlb-report": pool_retrieve_wlb_report,
    "pool-retrieve-wlb-diagnostics": _download(
        "/wlb_diagnostics", "WLB diagnostics download", "filename", "Save workload-balancing diagnostics."
    ),
    "audit-log-get": _download(
        "/audit_log", "Audit log download", "filename", "Save the audit log (since=) to filename=."
    ),
}
