"""One-call commands on hosts, pools and the rarer classes (commands/declare.py)."""

from __future__ import annotations

from pyxapi.cli.commands.declare import (
    call,
    const,
    flag,
    forced,
    host_or_master,
    integer,
    keys,
    mapping,
    on_selected,
    on_uuid,
    p,
    real,
    ref,
    refs,
    size,
    the_pool,
    this_host,
    words,
)

FORCE = "This operation is extremely dangerous and may cause data loss. This operation must be forced (use --force)."

COMMANDS = {
    # hosts
    "host-enable": on_selected("host", "host.enable", doc="Let the selected host(s) run VMs again."),
    "host-disable": on_selected(
        "host",
        "host.disable",
        flag("auto-enable", True),
        doc="Stop the selected host(s) from starting new VMs (auto-enable=false keeps them disabled on restart).",
    ),
    "host-reboot": on_selected("host", "host.reboot", doc="Reboot the selected (disabled, empty) host(s)."),
    "host-shutdown": on_selected("host", "host.shutdown", doc="Power off the selected (disabled, empty) host(s)."),
    "host-power-on": on_selected("host", "host.power_on", doc="Power the selected host(s) on remotely."),
    "host-dmesg": on_selected("host", "host.dmesg", show_as="value", doc="Print the host's kernel log."),
    "host-sync-data": on_selected("host", "host.sync_data", doc="Push the host's data (RRDs, blobs) to the master."),
    "host-compute-free-memory": on_selected(
        "host", "host.compute_free_memory", show_as="msg", multiple=False, doc="Print the memory free for VMs."
    ),
    "host-compute-memory-overhead": on_selected(
        "host", "host.compute_memory_overhead", show_as="msg", multiple=False, doc="Print the host's memory overhead."
    ),
    "host-get-server-certificate": on_selected(
        "host", "host.get_server_certificate", show_as="msg", multiple=False, doc="Print the host's TLS certificate."
    ),
    "host-get-system-status-capabilities": on_selected(
        "host", "host.get_system_status_capabilities", show_as="msg", multiple=False, doc="Print status capabilities."
    ),
    "host-enable-local-storage-caching": on_selected(
        "host", "host.enable_local_storage_caching", ref("SR", "sr-uuid"), doc="Cache disks on the local SR."
    ),
    "host-disable-local-storage-caching": on_selected(
        "host", "host.disable_local_storage_caching", doc="Stop caching disks locally."
    ),
    "host-enable-ssh": on_selected("host", "host.enable_ssh", doc="Start the SSH service on the selected host(s)."),
    "host-disable-ssh": on_selected("host", "host.disable_ssh", doc="Stop the SSH service on the selected host(s)."),
    "host-reset-server-certificate": on_selected(
        "host", "host.reset_server_certificate", doc="Replace the host's TLS certificate with a new self-signed one."
    ),
    "host-refresh-server-certificate": on_selected(
        "host", "host.refresh_server_certificate", doc="Renew the host's TLS certificate."
    ),
    "host-apply-updates": on_selected(
        "host", "host.apply_updates", p("hash"), show_as="lines", doc="Apply the updates synchronised with hash=."
    ),
    "host-data-source-list": on_selected(
        "host", "host.get_data_sources", show_as="records", multiple=False, doc="List the host's data sources."
    ),
    "host-data-source-record": on_selected(
        "host", "host.record_data_source", p("data-source"), multiple=False, doc="Start recording a data source."
    ),
    "host-data-source-query": on_selected(
        "host", "host.query_data_source", p("data-source"), show_as="value", multiple=False, doc="Print a data source."
    ),
    "host-data-source-forget": on_selected(
        "host", "host.forget_data_source_archives", p("data-source"), multiple=False, doc="Forget a data source."
    ),
    "host-set-power-on-mode": on_selected(
        "host",
        "host.set_power_on_mode",
        p("power-on-mode"),
        mapping("power-on-config"),
        doc="Choose how the host is powered on remotely (power-on-mode=, power-on-config:key=value).",
    ),
    "host-set-hostname-live": on_uuid(
        "host.set_hostname_live", p("host-name"), key="host-uuid", doc="Change the host's hostname now."
    ),
    "host-send-debug-keys": on_uuid(
        "host.send_debug_keys", p("keys"), key="host-uuid", doc="Send debug keys to the hypervisor."
    ),
    "host-syslog-reconfigure": on_uuid(
        "host.syslog_reconfigure", key="host-uuid", doc="Apply the host's logging settings to syslog."
    ),
    "host-refresh-pack-info": on_uuid("host.refresh_pack_info", key="host-uuid", doc="Re-read installed packs."),
    "host-get-sm-diagnostics": on_uuid("host.get_sm_diagnostics", show_as="msg", doc="Print storage diagnostics."),
    "host-get-thread-diagnostics": on_uuid("host.get_thread_diagnostics", show_as="msg", doc="Print thread state."),
    "host-enable-display": on_uuid("host.enable_display", show_as="value", doc="Let the host use its display."),
    "host-disable-display": on_uuid("host.disable_display", show_as="value", doc="Release the host's display."),
    "host-declare-dead": on_uuid("host.declare_dead", doc="Declare an unreachable host dead, releasing its VMs."),
    "host-sm-dp-destroy": on_uuid(
        "host.sm_dp_destroy", p("dp"), flag("allow-leak"), doc="Destroy a storage datapath on the host."
    ),
    "host-management-reconfigure": call(
        "host.management_reconfigure", ref("PIF", "pif-uuid"), doc="Move the management interface to pif-uuid=."
    ),
    "host-management-disable": call("host.management_disable", doc="Turn the management interface off."),
    "host-emergency-management-reconfigure": call(
        "host.local_management_reconfigure", p("interface"), doc="Move management to interface= (emergency)."
    ),
    "host-emergency-ha-disable": forced(
        call("host.emergency_ha_disable", flag("soft"), doc="Turn HA off on this host (needs --force)."), FORCE
    ),
    "host-emergency-reset-server-certificate": call(
        "host.emergency_reset_server_certificate", doc="Regenerate this host's TLS certificate (emergency)."
    ),
    "host-emergency-disable-tls-verification": call(
        "host.emergency_disable_tls_verification", doc="Stop verifying TLS certificates on this host (emergency)."
    ),
    "host-emergency-reenable-tls-verification": call(
        "host.emergency_reenable_tls_verification", doc="Verify TLS certificates on this host again."
    ),
    "host-emergency-clear-mandatory-guidance": call(
        "host.emergency_clear_mandatory_guidance", doc="Clear the host's pending mandatory update guidance."
    ),
    "host-is-in-emergency-mode": call(
        "host.is_in_emergency_mode", show_as="value", doc="Print whether this host is in emergency mode."
    ),
    "host-shutdown-agent": call("host.shutdown_agent", doc="Stop the toolstack daemon on this host."),
    "host-signal-networking-change": call(
        "host.signal_networking_change", doc="Tell the toolstack networking changed."
    ),
    "host-notify": call("host.notify", p("type"), p("params", ""), doc="Send the toolstack a notification."),
    "host-update-firewalld-service-status": call(
        "host.update_firewalld_service_status", doc="Re-apply the firewall's service settings."
    ),
    "host-prepare-for-poweroff": call(
        "host.prepare_for_poweroff", this_host(), doc="Prepare this host to be powered off."
    ),
    "host-license-remove": call("host.license_remove", host_or_master(), doc="Remove the host's license."),
    "host-apply-edition": call(
        "host.apply_edition", host_or_master(), p("edition"), const(False), doc="Switch the host to another edition."
    ),
    "host-crashdump-destroy": on_uuid("host_crashdump.destroy", doc="Delete a host crash dump (uuid=)."),
    "host-crashdump-upload": on_uuid(
        "host_crashdump.upload", p("url", ""), keys("http_proxy"), doc="Upload a host crash dump to url=."
    ),
    "hostdriver-select": on_uuid(
        "Host_driver.select",
        ref("Driver_variant", "variant-name"),
        doc="Choose the driver variant to load (variant-name= is the variant's uuid).",
    ),
    "hostdriver-deselect": forced(on_uuid("Host_driver.deselect", doc="Unload the driver's variant."), FORCE),
    "hostdriver-variant-select": on_uuid("Driver_variant.select", doc="Select this driver variant (uuid=)."),
    "hostdriver-rescan": on_selected("host", "Host_driver.rescan", doc="Rescan the selected host's drivers."),
    # pools
    "pool-designate-new-master": call(
        "pool.designate_new_master", ref("host", "host-uuid"), doc="Hand the coordinator role over to host-uuid=."
    ),
    "pool-management-reconfigure": call(
        "pool.management_reconfigure", ref("network", "network-uuid"), doc="Move every host's management network."
    ),
    "pool-sync-database": call("pool.sync_database", doc="Copy the pool database to every member now."),
    "pool-recover-slaves": call(
        "pool.recover_slaves", show_as="uuids:host", doc="Point members in emergency mode back at this coordinator."
    ),
    "pool-enable-binary-storage": call("pool.enable_binary_storage", doc="Keep RRDs, messages and blobs on disk."),
    "pool-disable-binary-storage": call("pool.disable_binary_storage", doc="Stop keeping binary data on disk."),
    "pool-ha-disable": call("pool.disable_ha", doc="Turn high availability off."),
    "pool-ha-prevent-restarts-for": call(
        "pool.ha_prevent_restarts_for", integer("seconds"), doc="Suspend HA restarts for seconds=."
    ),
    "pool-ha-compute-max-host-failures-to-tolerate": call(
        "pool.ha_compute_max_host_failures_to_tolerate", show_as="value", doc="Print how many host failures HA covers."
    ),
    "pool-ha-enable": call(
        "pool.enable_ha",
        refs("SR", "heartbeat-sr-uuids"),
        mapping("ha-config"),
        doc="Turn high availability on with heartbeat-sr-uuids= as statefile SRs.",
    ),
    "pool-enable-redo-log": call("pool.enable_redo_log", ref("SR", "sr-uuid"), doc="Keep a redo log on sr-uuid=."),
    "pool-disable-redo-log": call("pool.disable_redo_log", doc="Stop keeping a redo log."),
    "pool-certificate-sync": call("pool.certificate_sync", doc="Copy CA certificates and CRLs to every member."),
    "pool-certificate-list": call("pool.certificate_list", show_as="lines", doc="List the pool's CA certificates."),
    "pool-certificate-uninstall": call("pool.certificate_uninstall", p("name"), doc="Remove a CA certificate."),
    "pool-uninstall-ca-certificate": call(
        "pool.uninstall_ca_certificate", p("name"), flag("force"), doc="Remove a CA certificate from the pool."
    ),
    "pool-crl-list": call("pool.crl_list", show_as="lines", doc="List the pool's certificate revocation lists."),
    "pool-crl-uninstall": call("pool.crl_uninstall", p("name"), doc="Remove a certificate revocation list."),
    "pool-enable-tls-verification": call("pool.enable_tls_verification", doc="Verify TLS between pool members."),
    "pool-secret-rotate": call("pool.rotate_secret", doc="Replace the pool's shared secret."),
    "pool-send-test-post": call(
        "pool.send_test_post",
        p("dest-host"),
        integer("dest-port"),
        p("body"),
        show_as="msg",
        doc="POST body= over HTTPS to dest-host=:dest-port= and print the answer.",
    ),
    "pool-set-vswitch-controller": call("pool.set_vswitch_controller", p("address"), doc="Set the SDN controller."),
    "pool-emergency-reset-master": call(
        "pool.emergency_reset_master", p("master-address"), doc="Point this member at a new coordinator."
    ),
    "pool-enable-local-storage-caching": on_uuid(
        "pool.enable_local_storage_caching", doc="Cache disks on local SRs across the pool."
    ),
    "pool-disable-local-storage-caching": on_uuid(
        "pool.disable_local_storage_caching", doc="Stop local disk caching across the pool."
    ),
    "pool-apply-edition": call("pool.apply_edition", the_pool(), p("edition"), doc="Switch every host's edition."),
    "pool-enable-ssh": call("pool.enable_ssh", the_pool(), doc="Start SSH on every host."),
    "pool-disable-ssh": call("pool.disable_ssh", the_pool(), doc="Stop SSH on every host."),
    "pool-enable-client-certificate-auth": call(
        "pool.enable_client_certificate_auth", the_pool(), p("name"), doc="Accept TLS client certificates for name=."
    ),
    "pool-disable-client-certificate-auth": call(
        "pool.disable_client_certificate_auth", the_pool(), doc="Stop accepting TLS client certificates."
    ),
    "pool-configure-repository-proxy": call(
        "pool.configure_repository_proxy",
        the_pool(),
        p("proxy-url"),
        p("proxy-username", ""),
        p("proxy-password", ""),
        doc="Reach update repositories through a proxy.",
    ),
    "pool-disable-repository-proxy": call(
        "pool.disable_repository_proxy", the_pool(), doc="Stop using a proxy for repositories."
    ),
    "pool-reset-telemetry-uuid": call("pool.reset_telemetry_uuid", the_pool(), doc="Regenerate the telemetry id."),
    "pool-configure-update-sync": call(
        "pool.configure_update_sync",
        the_pool(),
        p("update-sync-frequency"),
        integer("update-sync-day"),
        doc="Schedule update synchronisation (update-sync-frequency=daily|weekly, update-sync-day=).",
    ),
    "pool-set-update-sync-enabled": call(
        "pool.set_update_sync_enabled", the_pool(), flag("value"), doc="Turn scheduled update sync on or off."
    ),
    "pool-sync-updates": call(
        "pool.sync_updates",
        the_pool(),
        flag("force"),
        p("token", ""),
        p("token-id", ""),
        p("username", ""),
        p("password", ""),
        show_as="value",
        doc="Synchronise updates from the enabled repositories.",
    ),
    "pool-get-guest-secureboot-readiness": call(
        "pool.get_guest_secureboot_readiness",
        the_pool(),
        show_as="value",
        doc="Print the pool's Secure Boot readiness.",
    ),
    "pool-external-auth-set-ldaps": call(
        "pool.external_auth_set_ldaps", the_pool(), flag("ldaps"), flag("force"), doc="Use LDAPS for external auth."
    ),
    "pool-enable-external-auth": call(
        "pool.enable_external_auth",
        the_pool(),
        mapping("config"),
        p("service-name"),
        p("auth-type"),
        doc="Enable external authentication (auth-type=, service-name=, config:key=value).",
    ),
    "pool-disable-external-auth": call(
        "pool.disable_external_auth", the_pool(), mapping("config"), doc="Disable external authentication."
    ),
    "pool-uninstall-trusted-certificate": call(
        "pool.uninstall_trusted_certificate",
        the_pool(),
        ref("Certificate", "certificate-uuid"),
        doc="Remove a trusted certificate.",
    ),
    # objects created by one call
    "gpu-group-destroy": on_uuid("GPU_group.destroy", doc="Destroy the GPU group (uuid=)."),
    "gpu-group-get-remaining-capacity": on_uuid(
        "GPU_group.get_remaining_capacity",
        ref("VGPU_type", "vgpu-type-uuid"),
        show_as="value",
        doc="Print how many more vGPUs of a type fit.",
    ),
    "vgpu-destroy": on_uuid("VGPU.destroy", doc="Destroy the virtual GPU (uuid=)."),
    "vtpm-destroy": on_uuid("VTPM.destroy", doc="Destroy the virtual TPM (uuid=)."),
    "vtpm-create": call(
        "VTPM.create", ref("VM", "vm-uuid"), flag("is-unique"), show_as="uuid:VTPM", doc="Add a virtual TPM to a VM."
    ),
    "vusb-destroy": on_uuid("VUSB.destroy", doc="Destroy the virtual USB device (uuid=)."),
    "vusb-unplug": on_uuid("VUSB.unplug", doc="Unplug the virtual USB device (uuid=)."),
    "pusb-scan": call("PUSB.scan", ref("host", "host-uuid"), doc="Look for USB devices on host-uuid=."),
    "pci-enable-dom0-access": on_uuid("PCI.enable_dom0_access", show_as="value", doc="Give dom0 the PCI device."),
    "pci-disable-dom0-access": on_uuid("PCI.disable_dom0_access", show_as="value", doc="Take the device from dom0."),
    "pci-get-dom0-access-status": on_uuid("PCI.get_dom0_access_status", show_as="value", doc="Print dom0 access."),
    "pgpu-enable-dom0-access": on_uuid("PGPU.enable_dom0_access", show_as="value", doc="Give dom0 the GPU."),
    "pgpu-disable-dom0-access": on_uuid("PGPU.disable_dom0_access", show_as="value", doc="Take the GPU from dom0."),
    "drtask-destroy": on_uuid("DR_task.destroy", doc="Destroy the disaster-recovery task (uuid=)."),
    "drtask-create": call(
        "DR_task.create",
        p("type"),
        mapping("device-config"),
        words("sr-whitelist"),
        show_as="uuid:DR_task",
        doc="Introduce the SRs found with type= and device-config: for disaster recovery.",
    ),
    "pvs-site-forget": on_uuid("PVS_site.forget", doc="Forget the PVS site (uuid=)."),
    "pvs-site-introduce": call(
        "PVS_site.introduce",
        p("name-label"),
        p("name-description", ""),
        p("pvs-uuid", ""),
        show_as="uuid:PVS_site",
        doc="Introduce a PVS site.",
    ),
    "pvs-server-forget": on_uuid("PVS_server.forget", doc="Forget the PVS server (uuid=)."),
    "pvs-server-introduce": call(
        "PVS_server.introduce",
        words("addresses"),
        integer("first-port"),
        integer("last-port"),
        ref("PVS_site", "pvs-site-uuid"),
        show_as="uuid:PVS_server",
        doc="Introduce a PVS server.",
    ),
    "pvs-proxy-create": call(
        "PVS_proxy.create",
        ref("PVS_site", "pvs-site-uuid"),
        ref("VIF", "vif-uuid"),
        show_as="uuid:PVS_proxy",
        doc="Create a PVS proxy for a VIF.",
    ),
    "pvs-proxy-destroy": on_uuid("PVS_proxy.destroy", doc="Destroy the PVS proxy (uuid=)."),
    "pvs-cache-storage-destroy": on_uuid("PVS_cache_storage.destroy", doc="Destroy the PVS cache storage (uuid=)."),
    "sdn-controller-forget": on_uuid("SDN_controller.forget", doc="Forget the SDN controller (uuid=)."),
    "sdn-controller-introduce": call(
        "SDN_controller.introduce",
        p("protocol", "ssl"),
        p("address", ""),
        integer("tcp-port", 0),
        show_as="uuid:SDN_controller",
        doc="Introduce an SDN controller.",
    ),
    "cluster-destroy": on_uuid("Cluster.destroy", doc="Destroy the cluster (uuid=)."),
    "cluster-pool-destroy": on_uuid("Cluster.pool_destroy", key="cluster-uuid", doc="Destroy the pool's cluster."),
    "cluster-pool-force-destroy": on_uuid(
        "Cluster.pool_force_destroy", key="cluster-uuid", doc="Force-destroy the pool's cluster."
    ),
    "cluster-pool-resync": on_uuid("Cluster.pool_resync", key="cluster-uuid", doc="Resynchronise the pool's cluster."),
    "cluster-create": call(
        "Cluster.create",
        ref("PIF", "pif-uuid"),
        p("cluster-stack", "corosync"),
        flag("pool-auto-join", True),
        real("token-timeout"),
        real("token-timeout-coefficient"),
        show_as="uuid:Cluster",
        doc="Create a cluster on pif-uuid=.",
    ),
    "cluster-pool-create": call(
        "Cluster.pool_create",
        ref("network", "network-uuid"),
        p("cluster-stack", "corosync"),
        real("token-timeout"),
        real("token-timeout-coefficient"),
        show_as="uuid:Cluster",
        doc="Create a pool-wide cluster on network-uuid=.",
    ),
    "cluster-host-create": call(
        "Cluster_host.create",
        ref("Cluster", "cluster-uuid"),
        ref("host", "host-uuid"),
        ref("PIF", "pif-uuid"),
        show_as="uuid:Cluster_host",
        doc="Add a host to a cluster.",
    ),
    "cluster-host-destroy": on_uuid("Cluster_host.destroy", doc="Leave the cluster (uuid= of the cluster host)."),
    "cluster-host-force-destroy": on_uuid("Cluster_host.force_destroy", doc="Force a host out of the cluster."),
    "cluster-host-enable": on_uuid("Cluster_host.enable", doc="Enable cluster membership."),
    "cluster-host-disable": on_uuid("Cluster_host.disable", doc="Disable cluster membership."),
    "repository-forget": on_uuid("Repository.forget", doc="Forget the update repository (uuid=)."),
    "repository-set-gpgkey-path": on_uuid(
        "Repository.set_gpgkey_path", p("gpgkey-path"), doc="Set the repository's GPG key file name."
    ),
    "repository-introduce": call(
        "Repository.introduce",
        p("name-label"),
        p("name-description", ""),
        p("binary-url"),
        p("source-url"),
        flag("update"),
        p("gpgkey-path", ""),
        show_as="uuid:Repository",
        doc="Add an update repository.",
    ),
    "repository-introduce-bundle": call(
        "Repository.introduce_bundle",
        p("name-label"),
        p("name-description", ""),
        show_as="uuid:Repository",
        doc="Add a bundle repository.",
    ),
    "observer-destroy": on_uuid("Observer.destroy", doc="Destroy the observer (uuid=)."),
    "vm-group-destroy": on_uuid("VM_group.destroy", doc="Destroy the VM group (uuid=)."),
    "rate-limit-destroy": on_uuid("Rate_limit.destroy", doc="Destroy the rate limit (uuid=)."),
    "rate-limit-add-caller": on_uuid(
        "Rate_limit.add_caller", ref("Caller", "caller-uuid"), doc="Apply the rate limit to a caller."
    ),
    "rate-limit-remove-caller": on_uuid(
        "Rate_limit.remove_caller", ref("Caller", "caller-uuid"), doc="Stop applying the rate limit to a caller."
    ),
    "caller-destroy": on_uuid("Caller.destroy", doc="Destroy the caller record (uuid=)."),
    "caller-list-usage": call("Caller.query_all_usage", show_as="lines", doc="List every caller's usage."),
    "appliance-destroy": on_uuid("VM_appliance.destroy", doc="Destroy the VM appliance (uuid=)."),
    "appliance-start": on_uuid("VM_appliance.start", flag("paused"), doc="Start the appliance's VMs in order."),
    "patch-apply": on_uuid("pool_patch.apply", ref("host", "host-uuid"), show_as="msg", doc="Apply a patch to a host."),
    "patch-precheck": on_uuid(
        "pool_patch.precheck", ref("host", "host-uuid"), show_as="msg", doc="Check a patch against a host."
    ),
    "patch-clean": on_uuid("pool_patch.clean", doc="Delete the patch's files."),
    "patch-pool-apply": on_uuid("pool_patch.pool_apply", doc="Apply the patch to every host."),
    "patch-pool-clean": on_uuid("pool_patch.pool_clean", doc="Delete the patch's files on every host."),
    "patch-destroy": on_uuid("pool_patch.destroy", doc="Forget the patch."),
    "update-destroy": on_uuid("pool_update.destroy", doc="Forget the update."),
    "update-pool-apply": on_uuid("pool_update.pool_apply", doc="Apply the update to every host."),
    "update-pool-clean": on_uuid("pool_update.pool_clean", doc="Delete the update's files on every host."),
    "update-introduce": call(
        "pool_update.introduce", ref("VDI", "vdi-uuid"), show_as="uuid:pool_update", doc="Introduce an update ISO."
    ),
    "update-resync-host": call("pool_update.resync_host", ref("host", "host-uuid"), doc="Resync a host's updates."),
    "diagnostic-compact": on_selected("host", "Diagnostics.gc_compact", doc="Compact the toolstack's memory heap."),
    "diagnostic-gc-stats": on_selected(
        "host", "Diagnostics.gc_stats", show_as="table", doc="Print the toolstack's memory statistics."
    ),
    "diagnostic-db-stats": call("Diagnostics.db_stats", show_as="table", doc="Print the database's statistics."),
    "diagnostic-net-stats": on_selected(
        "host",
        "Diagnostics.network_stats",
        keys("uri", "method", "params"),
        show_as="lines",
        doc="Print the HTTP server's statistics (uri=, method=, params=).",
    ),
    "vmss-destroy": on_uuid("VMSS.destroy", doc="Destroy the snapshot schedule (uuid=)."),
    "subject-remove": call("subject.destroy", ref("subject", "subject-uuid"), doc="Remove a subject."),
    "lvhd-enable-thin-provisioning": on_selected(
        "host",
        "LVHD.enable_thin_provisioning",
        ref("SR", "sr-uuid"),
        size("initial-allocation"),
        size("allocation-quantum"),
        doc="Turn thin provisioning on for an LVHD SR.",
    ),
}
