"""Pool commands with more than one call behind them: join/eject, certificates from files,
HA planning, workload balancing."""

from __future__ import annotations

import os

from pyxapi.cli.errors import ApiFailure, CliFailure, XeExit

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pyxapi.cli.ctx import Ctx

FUSE_SECONDS = "10."


def pool_join(c: Ctx) -> None:
    """Make this host join the pool whose coordinator is master-address= (master-username=,
    master-password=; --force skips compatibility checks)."""
    args = (c.req("master-address"), c.req("master-username"), c.req("master-password"))
    try:
        c.call("pool.join_force" if c.flag("force") else "pool.join", *args)
    except ApiFailure as e:
        if e.code != "POOL_JOINING_HOST_CONNECTION_FAILED":
            raise
        c.printer.lines(
            [
                "Host cannot contact destination host: connection refused.",
                "Check destination host has services running and accessible from this host.",
            ]
        )
        return
    c.printer.lines([f"Host agent will restart and attempt to join pool in {FUSE_SECONDS} seconds..."])


def _local_vdis(c: Ctx, host: str) -> list[str]:
    """VDIs on SRs only this host sees: an ejected host loses them."""
    out = []
    for pbd in c.call("host.get_PBDs", host):
        try:
            sr = c.call("PBD.get_SR", pbd)
            others = [c.call("PBD.get_host", p) for p in c.call("SR.get_PBDs", sr)]
            if any(h != host for h in others):
                continue
            for vdi in c.call("SR.get_VDIs", sr):
                out.append(f"VDI: {c.uuid_of('VDI', vdi)} ({c.call('VDI.get_name_label', vdi)})")
        except ApiFailure:
            continue
    return out


def pool_eject(c: Ctx) -> None:
    """Remove host-uuid= from the pool (it restarts as a pool of its own, with its local SRs
    wiped); asks for 'yes' unless --force."""
    import sys

    host = c.by_uuid("host", c.req("host-uuid"))
    if not c.flag("force"):
        c.printer.msg("WARNING: Ejecting a host from the pool will reinitialise that host's local SRs.")
        c.printer.msg("WARNING: Any data contained with the local SRs will be lost.")
        vdis = _local_vdis(c, host)
        if vdis:
            c.printer.msg("The following VDI objects will be destroyed:")
            for line in vdis:
                c.printer.msg(line)
        c.printer.msg("Type 'yes' to continue")
        sys.stdout.flush()
        answer = sys.stdin.readline().rstrip("\n")
        if answer.strip().lower() != "yes":
            c.printer.msg(f"Aborted (you typed: '{answer}')")
            return
    c.call("pool.eject", host)
    c.printer.lines([f"Specified host will attempt to restart as a master of a new pool in {FUSE_SECONDS} seconds..."])


def pool_emergency_transition_to_master(c: Ctx) -> None:
    """Make this pool member the coordinator (when the coordinator is lost); --force even if
    it already is."""
    c.call("pool.emergency_transition_to_master")
    c.printer.lines([f"Host agent will restart and transition to master in {FUSE_SECONDS} seconds..."])


def _file(c: Ctx, key: str, what: str) -> tuple[str, str]:
    name = c.req(key)
    try:
        with open(name) as f:
            return os.path.basename(name), f.read()
    except OSError:
        c.printer.stderr(f"Failed to read {what}\n")
        raise XeExit(1) from None


def pool_install_ca_certificate(c: Ctx) -> None:
    """Trust the CA certificate in filename= across the pool."""
    name, cert = _file(c, "filename", "certificate")
    c.call("pool.install_ca_certificate", name, cert)


def pool_certificate_install(c: Ctx) -> None:
    """Trust the CA certificate in filename= across the pool (old name of
    pool-install-ca-certificate)."""
    name, cert = _file(c, "filename", "certificate")
    c.call("pool.certificate_install", name, cert)


def pool_crl_install(c: Ctx) -> None:
    """Install the certificate revocation list in filename= across the pool."""
    name, crl = _file(c, "filename", "CRL")
    c.call("pool.crl_install", name, crl)


def pool_install_trusted_certificate(c: Ctx) -> None:
    """Trust the certificate in filename= (ca=true for a CA; purpose= for its uses)."""
    _, cert = _file(c, "filename", "certificate")
    purposes = [p for p in (c.opt("purpose") or "").split(",") if p]
    c.call("pool.install_trusted_certificate", c.pool(), c.flag("ca"), cert, purposes)


def pool_ha_compute_hypothetical_max_host_failures_to_tolerate(c: Ctx) -> None:
    """How many host failures HA would cover with these VMs protected: pairs of vm-uuid= and
    restart-priority=."""
    vms = c.params.all("vm-uuid")
    priorities = c.params.all("restart-priority")
    if len(vms) != len(priorities):
        raise CliFailure("Call requires an equal number of vm-uuid and restart-priority arguments")
    plan = {c.by_uuid("VM", u): p for u, p in zip(vms, priorities, strict=True)}
    c.printer.lines([str(c.call("pool.ha_compute_hypothetical_max_host_failures_to_tolerate", plan))])


def pool_ha_compute_vm_failover_plan(c: Ctx) -> None:
    """Show where HA would restart the VMs of the hosts host-uuids=a,b if they failed."""
    hosts = [c.by_uuid("host", u) for u in c.req("host-uuids").split(",") if u]
    vms = [v for h in hosts for v in c.call("host.get_resident_VMs", h) if not c.call("VM.get_is_control_domain", v)]
    rows = [("VM", "Destination Host or Error")]
    for vm, result in c.call("pool.ha_compute_vm_failover_plan", hosts, vms).items():
        label = f"{c.resolver.uuid('VM', vm)} ({c.resolver.name('VM', vm)})"
        if "host" in result:
            h = result["host"]
            rows.append((label, f"{c.resolver.uuid('host', h)} ({c.resolver.name('host', h)})"))
        else:
            rows.append((label, result.get("error_code", "UNKNOWN")))
    c.printer.table([rows])


def pool_initialize_wlb(c: Ctx) -> None:
    """Connect the pool to a workload-balancing server."""
    c.call(
        "pool.initialize_wlb",
        c.req("wlb_url"),
        c.req("wlb_username"),
        c.req("wlb_password"),
        c.req("xenserver_username"),
        c.req("xenserver_password"),
    )


def pool_deconfigure_wlb(c: Ctx) -> None:
    """Forget the workload-balancing configuration."""
    c.call("pool.deconfigure_wlb")


def pool_send_wlb_configuration(c: Ctx) -> None:
    """Send workload-balancing settings (config:key=value)."""
    c.call("pool.send_wlb_configuration", dict(c.params.prefixed("config")))


def pool_retrieve_wlb_configuration(c: Ctx) -> None:
    """Print the workload-balancing settings."""
    c.printer.table([list(c.call("pool.retrieve_wlb_configuration").items())])


def pool_retrieve_wlb_recommendations(c: Ctx) -> None:
    """Print the workload-balancing migration advice."""
    rows = [("VM", "Host, OptID, RecID, Reason")]
    for vm, advice in c.call("pool.retrieve_wlb_recommendations").items():
        rows.append((f"{c.resolver.uuid('VM', vm)} ({c.resolver.name('VM', vm)})", " ".join(advice)))
    c.printer.table([rows])


def pool_get_cpu_features(c: Ctx) -> None:
    """Print the pool's common CPU feature mask."""
    c.printer.msg(str(c.call("pool.get_cpu_info", c.pool()).get("features", "")))


def pool_disable_ssl_legacy(c: Ctx) -> None:
    """Turn legacy SSL off on every host (uuid= for the pool)."""
    pool = c.by_uuid("pool", c.req("uuid")) if c.has("uuid") else c.pool()
    c.call("pool.disable_ssl_legacy", pool)


COMMANDS = {
    "pool-join": pool_join,
    "pool-eject": pool_eject,
    "pool-emergency-transition-to-master": pool_emergency_transition_to_master,
    "pool-install-ca-certificate": pool_install_ca_certificate,
    "pool-certificate-install": pool_certificate_install,
    "pool-crl-install": pool_crl_install,
    "pool-install-trusted-certificate": pool_install_trusted_certificate,
    "pool-ha-compute-hypothetical-max-host-failures-to-tolerate": (
        pool_ha_compute_hypothetical_max_host_failures_to_tolerate
    ),
    "pool-ha-compute-vm-failover-plan": pool_ha_compute_vm_failover_plan,
    "pool-initialize-wlb": pool_initialize_wlb,
    "pool-deconfigure-wlb": pool_deconfigure_wlb,
    "pool-send-wlb-configuration": pool_send_wlb_configuration,
    "pool-retrieve-wlb-configuration": pool_retrieve_wlb_configuration,
    "pool-retrieve-wlb-recommendations": pool_retrieve_wlb_recommendations,
    "pool-get-cpu-features": pool_get_cpu_features,
    "pool-disable-ssl-legacy": pool_disable_ssl_legacy,
}
