"""Host commands with more than one call behind them."""

from __future__ import annotations

import base64

from pyxapi.cli.errors import ApiFailure, CliFailure, XeExit
from pyxapi.cli.records import CliRecord, choose_params, select_fields
from pyxapi.cli.selectors import do_op
from pyxapi.cli.table import class_spec

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pyxapi.cli.ctx import Ctx

NULL = "OpaqueRef:NULL"


def _host_or_session(c: Ctx, key: str = "host-uuid") -> str:
    return c.by_uuid("host", c.req(key)) if c.has(key) else c.this_host()


def host_evacuate(c: Ctx) -> None:
    """Migrate every VM off the selected host (network-uuid= for the migration network,
    batch-size= VMs at a time)."""
    network = c.by_uuid("network", c.req("network-uuid")) if c.has("network-uuid") else NULL
    batch = int(c.opt("batch-size", "0") or 0)
    do_op(
        c,
        "host",
        lambda h: c.call("host.evacuate", h.ref, network, batch),
        ["network-uuid", "batch-size"],
        multiple=False,
    )


def host_get_vms_which_prevent_evacuation(c: Ctx) -> None:
    """List the VMs that keep the host (uuid=) from being evacuated, and why."""
    host = c.by_uuid("host", c.req("uuid"))
    spec = class_spec("vm")
    fields = select_fields(spec, choose_params(c.opt("params"), ["uuid", "name-label"]))
    rows = []
    for vm, reasons in c.call("host.get_vms_which_prevent_evacuation", host).items():
        r = CliRecord(spec, vm, c.call("VM.get_record", vm), c.resolver)
        rows.append([*r.printed(fields), ("reason ( RO)", ",".join(reasons))])
    c.printer.table(rows)


def _ask_yes(c: Ctx, warnings: list[str]) -> bool:
    import sys

    for w in warnings:
        c.printer.msg(w)
    c.printer.msg("Type 'yes' to continue")
    sys.stdout.flush()
    answer = sys.stdin.readline().rstrip("\n")
    if answer.strip().lower() == "yes":
        return True
    c.printer.msg(f"Aborted (you typed: '{answer}')")
    return False


def host_forget(c: Ctx) -> None:
    """Remove a dead host (uuid=) from the pool database; asks for 'yes' unless --force."""
    host = c.by_uuid("host", c.req("uuid"))
    warnings = [
        "WARNING: A host should only be forgotten if it is physically unrecoverable;",
        "WARNING: if possible, Hosts should be 'ejected' from the Pool instead.",
        "WARNING: Once a host has been forgotten it will have to be re-installed.",
        "WARNING: This operation is irreversible.",
    ]
    if c.flag("force") or _ask_yes(c, warnings):
        c.call("host.destroy", host)


def host_call_plugin(c: Ctx) -> None:
    """Call function fn= of host plug-in plugin= on host-uuid= with args:key=value; prints the
    result."""
    host = c.by_uuid("host", c.req("host-uuid"))
    args = dict(c.params.prefixed("args"))
    for key in [k for k in args if ":" in k]:  # args:key:file=FILE passes the file's contents
        name, _, kind = key.partition(":")
        if kind == "file":
            try:
                with open(args.pop(key)) as f:
                    args[name] = f.read()
            except OSError:
                c.printer.stderr(f"Failed to read file {key}\n")
                raise XeExit(1) from None
    c.printer.lines([str(c.call("host.call_plugin", host, c.req("plugin"), c.req("fn"), args))])


def host_cpu_info(c: Ctx) -> None:
    """Print the CPU details of the host (uuid=, this host by default)."""
    host = _host_or_session(c, "uuid")
    info = c.call("host.get_cpu_info", host)
    c.printer.table([[(k, str(v)) for k, v in info.items()]])


def host_get_cpu_features(c: Ctx) -> None:
    """Print the host's CPU feature mask (uuid=, this host by default)."""
    host = _host_or_session(c, "uuid")
    c.printer.msg(str(c.call("host.get_cpu_info", host).get("features", "")))


def host_license_view(c: Ctx) -> None:
    """Show the host's license (host-uuid=, this host by default)."""
    params = c.call("host.get_license_params", _host_or_session(c))
    c.printer.table([[(k, str(v)) for k, v in params.items() if k != "sku_type"]])


def host_license_add(c: Ctx) -> None:
    """Apply the license file license-file= to the host (host-uuid=, this host by default)."""
    try:
        with open(c.req("license-file"), "rb") as f:
            data = f.read()
    except OSError:
        c.printer.stderr("Failed to read license file.\n")
        raise XeExit(1) from None
    try:
        c.call("host.license_add", _host_or_session(c), base64.b64encode(data).decode())
    except ApiFailure:
        c.printer.stderr("Failed to apply license file.\n")
        raise XeExit(1) from None
    c.printer.msg("License applied.")


def host_all_editions(c: Ctx) -> None:
    """List the editions a host can run."""
    host = c.this_host()
    edition = c.call("host.get_edition", host)
    c.printer.lines([str(edition)] if edition else [])


def host_bugreport_upload(c: Ctx) -> None:
    """Upload a bug report of the selected host to url= (http_proxy=)."""
    options = {"http_proxy": c.req("http_proxy")} if c.has("http_proxy") else {}
    url = c.opt("url", "") or ""
    do_op(c, "host", lambda h: c.call("host.bugreport_upload", h.ref, url, options), ["url", "http_proxy"])


def host_server_certificate_install(c: Ctx) -> None:
    """Install the TLS certificate certificate= with its key private-key= (and
    certificate-chain=) on the selected host; all are file names."""

    def read(key: str) -> str:
        try:
            with open(c.req(key)) as f:
                return f.read()
        except OSError:
            raise CliFailure(f"Failed to read {key} file {c.req(key)}") from None

    cert, key = read("certificate"), read("private-key")
    chain = read("certificate-chain") if c.has("certificate-chain") else ""
    do_op(
        c,
        "host",
        lambda h: c.call("host.install_server_certificate", h.ref, cert, key, chain),
        ["certificate", "private-key", "certificate-chain"],
        multiple=False,
    )


def host_retrieve_wlb_evacuate_recommendations(c: Ctx) -> None:
    """Print workload-balancing advice for evacuating the host (uuid=)."""
    host = c.by_uuid("host", c.req("uuid"))
    rows = [("VM", "[Host, RecID] / Error")]
    for vm, advice in c.call("host.retrieve_wlb_evacuate_recommendations", host).items():
        rows.append((f"{c.resolver.uuid('VM', vm)} ({c.resolver.name('VM', vm)})", " ".join(advice)))
    c.printer.table([rows])


def host_ha_xapi_healthcheck(c: Ctx) -> None:
    """Check the toolstack on this host answers (for HA)."""
    try:
        healthy = c.call("host.ha_xapi_healthcheck")
    except ApiFailure as e:
        c.printer.stderr(f"Host.ha_xapi_healthcheck threw exception: {e.code}\n")
        raise XeExit(3) from None
    if not healthy:
        c.printer.stderr("Host.ha_xapi_healthcheck reports false\n")
        raise XeExit(2)
    c.printer.msg("xapi is healthy.")


def host_enable_external_auth(c: Ctx) -> None:
    """Enable external authentication on host-uuid= (auth-type=, service-name=, config:)."""
    host = c.by_uuid("host", c.req("host-uuid"))
    c.call(
        "host.enable_external_auth", host, dict(c.params.prefixed("config")), c.req("service-name"), c.req("auth-type")
    )


def host_disable_external_auth(c: Ctx) -> None:
    """Disable external authentication on host-uuid=."""
    host = c.by_uuid("host", c.req("host-uuid"))
    c.call("host.disable_external_auth", host, dict(c.params.prefixed("config")), c.flag("force"))


def host_external_auth_set_ldaps(c: Ctx) -> None:
    """Use LDAPS (ldaps=true) for external authentication on host-uuid=."""
    host = c.by_uuid("host", c.req("host-uuid"))
    c.call("host.external_auth_set_ldaps", host, c.flag("ldaps"), c.flag("force"))


def host_get_system_status(c: Ctx) -> None:
    """Collect a status report of the selected host into filename= (entries=, output=)."""
    from pyxapi.cli.transfer import Transfer

    def op(h: CliRecord) -> None:
        t = Transfer(c, "Retrieving system status")
        query = t.query(host_id=h.ref, entries=c.opt("entries", "") or "", output=c.opt("output", "tar") or "tar")
        t.download("/system-status", query, c.req("filename"))

    do_op(c, "host", op, ["filename", "entries", "output"], multiple=False)


def diagnostic_timing_stats(c: Ctx) -> None:
    """Print each host's API timing statistics (--counts for call counts)."""
    rows = []
    for host in c.call("host.get_all"):
        rec = [("host-uuid", c.resolver.uuid("host", host)), ("host-name-label", c.resolver.name("host", host))]
        try:
            stats = c.call("host.get_diagnostic_timing_stats", host, c.flag("counts"))
            rec += sorted((str(k), str(v)) for k, v in stats.items())
        except ApiFailure as e:
            rec.append(("Error", e.code))
        rows.append(rec)
    c.printer.table(rows)


COMMANDS = {
    "host-evacuate": host_evacuate,
    "host-get-vms-which-prevent-evacuation": host_get_vms_which_prevent_evacuation,
    "host-forget": host_forget,
    "host-call-plugin": host_call_plugin,
    "host-cpu-info": host_cpu_info,
    "host-get-cpu-features": host_get_cpu_features,
    "host-license-view": host_license_view,
    "host-license-add": host_license_add,
    "host-all-editions": host_all_editions,
    "host-bugreport-upload": host_bugreport_upload,
    "host-server-certificate-install": host_server_certificate_install,
    "host-retrieve-wlb-evacuate-recommendations": host_retrieve_wlb_evacuate_recommendations,
    "host-ha-xapi-healthcheck": host_ha_xapi_healthcheck,
    "host-enable-external-auth": host_enable_external_auth,
    "host-disable-external-auth": host_disable_external_auth,
    "host-external-auth-set-ldaps": host_external_auth_set_ldaps,
    "host-get-system-status": host_get_system_status,
    "diagnostic-timing-stats": diagnostic_timing_stats,
}
