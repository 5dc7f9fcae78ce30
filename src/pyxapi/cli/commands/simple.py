"""One-call commands on storage, networks, tasks, secrets and sessions (commands/declare.py)."""

from __future__ import annotations

from pyxapi.cli.commands.declare import (
    call,
    flag,
    forced,
    integer,
    mapping,
    on_selected,
    on_uuid,
    p,
    ref,
)

FORCE = "This operation is extremely dangerous and may cause data loss. This operation must be forced (use --force)."

COMMANDS = {
    # storage: PBDs, SRs, VDIs, VBDs
    "pbd-plug": on_uuid("PBD.plug", doc="Attach the SR through this PBD (uuid=)."),
    "pbd-unplug": on_uuid("PBD.unplug", doc="Detach the SR from this PBD's host (uuid=)."),
    "pbd-destroy": on_uuid("PBD.destroy", doc="Destroy the (unplugged) PBD with this uuid."),
    "sr-scan": on_uuid("SR.scan", doc="Rescan the SR (uuid=): new disk images appear as VDIs."),
    "sr-forget": on_uuid("SR.forget", doc="Forget the SR (uuid=) without touching its data."),
    "sr-destroy": on_uuid("SR.destroy", doc="Destroy the SR (uuid=) and everything stored in it."),
    "sr-update": on_uuid("SR.update", doc="Refresh the SR's sizes from its storage (uuid=)."),
    "sr-enable-database-replication": on_uuid(
        "SR.enable_database_replication", doc="Replicate the pool database onto this SR."
    ),
    "sr-disable-database-replication": on_uuid(
        "SR.disable_database_replication", doc="Stop replicating the pool database onto this SR."
    ),
    "sr-data-source-list": on_selected(
        "sr", "SR.get_data_sources", show_as="records", multiple=False, doc="List the selected SR's data sources."
    ),
    "sr-data-source-record": on_selected(
        "sr", "SR.record_data_source", p("data-source"), multiple=False, doc="Start recording an SR data source."
    ),
    "sr-data-source-query": on_selected(
        "sr", "SR.query_data_source", p("data-source"), show_as="value", multiple=False, doc="Print a data source."
    ),
    "sr-data-source-forget": on_selected(
        "sr", "SR.forget_data_source_archives", p("data-source"), multiple=False, doc="Forget an SR data source."
    ),
    "vdi-destroy": on_uuid("VDI.destroy", doc="Destroy the disk (uuid=) and its data."),
    "vdi-forget": on_uuid("VDI.forget", doc="Forget the disk record (uuid=), keeping its data in the SR."),
    "vdi-update": on_uuid("VDI.update", doc="Refresh the disk's record from its SR (uuid=)."),
    "vdi-enable-cbt": on_uuid("VDI.enable_cbt", doc="Enable changed-block tracking on the disk (uuid=)."),
    "vdi-disable-cbt": on_uuid("VDI.disable_cbt", doc="Disable changed-block tracking on the disk (uuid=)."),
    "vdi-data-destroy": on_uuid("VDI.data_destroy", doc="Delete a snapshot disk's data, keeping its CBT metadata."),
    "vdi-unlock": forced(on_uuid("VDI.force_unlock", doc="Release the disk's storage lock (needs --force)."), FORCE),
    "vdi-snapshot": on_uuid(
        "VDI.snapshot", mapping("driver-params"), show_as="uuid:VDI", doc="Snapshot the disk (uuid=); prints its uuid."
    ),
    "vdi-generate-config": call(
        "VDI.generate_config",
        ref("host", "host-uuid"),
        ref("VDI", "uuid"),
        show_as="value",
        doc="Print the disk's attach configuration for a host.",
    ),
    "vdi-pool-migrate": on_uuid(
        "VDI.pool_migrate",
        ref("SR", "sr-uuid"),
        mapping("dest-img-format"),
        show_as="uuid:VDI",
        doc="Move a disk in use by a running VM to sr-uuid= (storage live migration).",
    ),
    "vdi-list-changed-blocks": call(
        "VDI.list_changed_blocks",
        ref("VDI", "vdi-from-uuid"),
        ref("VDI", "vdi-to-uuid"),
        show_as="msg",
        doc="Print the blocks that changed between two snapshots (base64 bitmap).",
    ),
    "vbd-plug": on_uuid("VBD.plug", doc="Hot-plug the virtual block device (uuid=) into its running VM."),
    "vbd-destroy": on_uuid("VBD.destroy", doc="Destroy the virtual block device (uuid=); the disk stays."),
    "vbd-eject": on_uuid("VBD.eject", doc="Eject the media from a CD drive (uuid=)."),
    "vbd-insert": on_uuid("VBD.insert", ref("VDI", "vdi-uuid"), doc="Insert vdi-uuid= into an empty CD drive (uuid=)."),
    "vbd-pause": on_uuid("VBD.pause", show_as="value", doc="Pause I/O on the device; prints the resume token."),
    "vbd-unpause": on_uuid("VBD.unpause", p("token"), doc="Resume I/O on the device with the token vbd-pause gave."),
    # networking
    "network-destroy": on_uuid("network.destroy", doc="Destroy the network (uuid=)."),
    "network-attach": on_uuid(
        "network.attach", ref("host", "host-uuid"), doc="Create the network's bridge on a host now."
    ),
    "vif-plug": on_uuid("VIF.plug", doc="Hot-plug the virtual interface (uuid=) into its running VM."),
    "vif-destroy": on_uuid("VIF.destroy", doc="Destroy the virtual interface (uuid=)."),
    "vif-move": on_uuid("VIF.move", ref("network", "network-uuid"), doc="Move the interface to network-uuid=."),
    "vif-configure-ipv4": on_uuid(
        "VIF.configure_ipv4",
        p("mode"),
        p("address", ""),
        p("gateway", ""),
        doc="Set the guest's IPv4 configuration for this interface (mode=static|none, address=, gateway=).",
    ),
    "vif-configure-ipv6": on_uuid(
        "VIF.configure_ipv6",
        p("mode"),
        p("address", ""),
        p("gateway", ""),
        doc="Set the guest's IPv6 configuration for this interface.",
    ),
    "pif-plug": on_uuid("PIF.plug", doc="Bring the physical interface (uuid=) up."),
    "pif-unplug": on_uuid("PIF.unplug", doc="Bring the physical interface (uuid=) down."),
    "pif-forget": on_uuid("PIF.forget", doc="Forget the physical interface record (uuid=)."),
    "pif-db-forget": on_uuid("PIF.db_forget", doc="Remove the interface record from the database only."),
    "pif-scan": call("PIF.scan", ref("host", "host-uuid"), doc="Look for new physical interfaces on host-uuid=."),
    "pif-introduce": call(
        "PIF.introduce",
        ref("host", "host-uuid"),
        p("mac", ""),
        p("device"),
        flag("managed", True),
        show_as="uuid:PIF",
        doc="Create the record for a physical interface device= on host-uuid= (mac= optional).",
    ),
    "pif-reconfigure-ip": on_uuid(
        "PIF.reconfigure_ip",
        p("mode"),
        p("IP", ""),
        p("netmask", ""),
        p("gateway", ""),
        p("DNS", ""),
        doc="Set the interface's IPv4 address: mode=dhcp|static|none, IP=, netmask=, gateway=, DNS=.",
    ),
    "pif-reconfigure-ipv6": on_uuid(
        "PIF.reconfigure_ipv6",
        p("mode"),
        p("IPv6", ""),
        p("gateway", ""),
        p("DNS", ""),
        doc="Set the interface's IPv6 address: mode=dhcp|autoconf|static|none, IPv6=, gateway=, DNS=.",
    ),
    "pif-set-primary-address-type": on_uuid(
        "PIF.set_primary_address_type", p("primary_address_type"), doc="Choose IPv4 or IPv6 as the primary address."
    ),
    "vlan-destroy": on_uuid("VLAN.destroy", doc="Destroy the VLAN (uuid=) and its interface."),
    "pool-vlan-create": call(
        "pool.create_VLAN_from_PIF",
        ref("PIF", "pif-uuid"),
        ref("network", "network-uuid"),
        integer("vlan"),
        show_as="uuids:PIF",
        doc="Create a VLAN on every host, on the interfaces like pif-uuid=; prints the new interfaces.",
    ),
    "bond-destroy": on_uuid("Bond.destroy", doc="Destroy the bond (uuid=), freeing its member interfaces."),
    "bond-set-mode": on_uuid(
        "Bond.set_mode", p("mode"), doc="Change the bond's mode (balance-slb, active-backup, lacp)."
    ),
    "tunnel-destroy": on_uuid("tunnel.destroy", doc="Destroy the tunnel (uuid=)."),
    "network-sriov-create": call(
        "network_sriov.create",
        ref("PIF", "pif-uuid"),
        ref("network", "network-uuid"),
        show_as="uuid:network_sriov",
        doc="Enable SR-IOV on a physical interface for a network.",
    ),
    "network-sriov-destroy": on_uuid("network_sriov.destroy", doc="Disable this SR-IOV network (uuid=)."),
    # tasks, secrets, messages, sessions
    "task-cancel": on_uuid("task.cancel", doc="Ask the task (uuid=) to stop."),
    "secret-destroy": on_uuid("secret.destroy", doc="Destroy the secret (uuid=)."),
    "session-subject-identifier-list": call(
        "session.get_all_subject_identifiers", show_as="lines", doc="List the subjects with open sessions."
    ),
    "session-subject-identifier-logout": call(
        "session.logout_subject_identifier", p("subject-identifier"), doc="Log out every session of a subject."
    ),
    "user-password-change": call(
        "session.change_password",
        p("old", ""),
        p("new"),
        doc="Change the password of the user logged in (old=, new=).",
    ),
}
