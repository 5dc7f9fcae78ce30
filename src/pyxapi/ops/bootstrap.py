"""First start and every start: the pool, this host with real facts, its control domain, roles.

On an empty database this creates what xapi creates when a host is installed; on later starts
it refreshes the facts that can change (software version, memory, address) and keeps the rest.
"""

from __future__ import annotations

from typing import Any

from pyxapi.context import Context
from pyxapi.db.store import NULL_REF, Store
from pyxapi.hostinfo import HostFacts, cpu_features, cpu_info, software_version
from pyxapi.model.schema import ROLE_ORDER
from pyxapi.ops.host import reenable_after_restart
from pyxapi.ops.network_runtime import ensure_internal_network
from pyxapi.ops.storage_setup import ensure_storage
from pyxapi.ops.templates import install_templates
from pyxapi.wire.marshal import now_datetime

ROLE_DESCRIPTIONS = {
    "pool-admin": "Full access, including host and pool configuration and user management",
    "pool-operator": "Manages host and pool wide resources: storage, networking, pools",
    "vm-power-admin": "Full access to VMs and templates, including placement and memory control",
    "vm-admin": "Manages VMs and templates",
    "vm-operator": "Uses VMs: power operations and consoles",
    "read-only": "Reads everything, changes nothing",
}


def bootstrap(ctx: Context, facts: HostFacts) -> None:
    store = ctx.store
    with store.transaction():
        if store.count("pool") == 0:
            host = _create_host(ctx, facts)
            store.create("pool", {"name_label": "", "master": host, "other_config": {}})
            _create_roles(store)
        host = _this_host(store)
        _refresh_host(ctx, host, facts)
        install_templates(store, ctx.config.data_dir / "images")
        ensure_internal_network(ctx)
        ensure_storage(ctx, host)
    ctx.host_ref = host
    ctx.pool_ref = store.refs("pool")[0]
    reenable_after_restart(ctx)


def _this_host(store: Store) -> str:
    pool = store.get("pool", store.refs("pool")[0])
    return str(pool["master"])


def _create_host(ctx: Context, facts: HostFacts) -> str:
    store = ctx.store
    major, minor = ctx.model.api_version
    metrics = store.create("host_metrics", {"memory_total": facts.memory_total, "live": True})
    host = store.create(
        "host",
        {
            "name_label": facts.hostname,
            "name_description": "Default install",
            "hostname": facts.hostname,
            "address": facts.address,
            "API_version_major": major,
            "API_version_minor": minor,
            "API_version_vendor": "XenSource",
            "enabled": True,
            "metrics": metrics,
            "sched_policy": "credit",
            "edition": "free",
            "external_auth_type": "",
            "power_on_mode": "",
        },
    )
    for i, cpu in enumerate(facts.cpus):
        store.create(
            "host_cpu",
            {
                "host": host,
                "number": i,
                "vendor": cpu.vendor,
                "speed": int(cpu.mhz or 0),
                "modelname": cpu.model_name,
                "family": cpu.family or 0,
                "model": cpu.model or 0,
                "stepping": str(cpu.stepping or 0),
                "flags": " ".join(cpu.flags),
                "features": cpu_features(cpu.flags),
                "utilisation": 0.0,
            },
        )
    _create_control_domain(store, host, facts)
    return host


def _create_control_domain(store: Store, host: str, facts: HostFacts) -> str:
    vcpus = max(1, facts.cpu_count)
    metrics = store.create(
        "VM_metrics",
        {"memory_actual": facts.memory_total, "VCPUs_number": vcpus, "state": [], "start_time": now_datetime()},
    )
    vm = store.create(
        "VM",
        {
            "name_label": f"Control domain on host: {facts.hostname}",
            "name_description": "The domain which manages physical devices and manages other domains",
            "is_control_domain": True,
            "is_a_template": False,
            "power_state": "Running",
            "resident_on": host,
            "domid": 0,
            "memory_static_max": facts.memory_total,
            "memory_dynamic_max": facts.memory_total,
            "memory_dynamic_min": facts.memory_total,
            "memory_static_min": 0,
            "memory_target": facts.memory_total,
            "VCPUs_max": vcpus,
            "VCPUs_at_startup": vcpus,
            "metrics": metrics,
            "user_version": 1,
            "domain_type": "pv",
        },
    )
    store.set_field("host", host, "control_domain", vm)
    return vm


def _create_roles(store: Store) -> None:
    for name in ROLE_ORDER:
        store.create(
            "role",
            {"name_label": name, "name_description": ROLE_DESCRIPTIONS[name], "subroles": [], "is_internal": False},
        )


def _refresh_host(ctx: Context, host: str, facts: HostFacts) -> None:
    store = ctx.store
    record = store.get("host", host)
    changes: dict[str, Any] = {
        "software_version": software_version(
            facts,
            api_version=ctx.model.api_version,
            xapi_version=f"{ctx.model.api_version[0]}.{ctx.model.api_version[1]}",
            db_schema="pyxapi-1",
            network_backend=str(ctx.services.get("network_backend", "bridge")),
            xen_version=ctx.services.get("xen_version"),
        ),
        "cpu_info": cpu_info(facts),
        "address": facts.address,
        "hostname": facts.hostname,
        "capabilities": list(ctx.services.get("hypervisor_capabilities", [])),
    }
    store.update("host", host, changes)
    if record["metrics"] != NULL_REF and store.exists("host_metrics", record["metrics"]):
        store.update(
            "host_metrics",
            record["metrics"],
            {
                "memory_total": facts.memory_total,
                "live": True,
                "last_updated": now_datetime(),
            },
        )
    store.set_field("host", host, "other_config", {**record["other_config"], "boot_time": str(int(facts.boot_time))})
    _refresh_control_domain(ctx, record["control_domain"])


def _refresh_control_domain(ctx: Context, vm: str) -> None:
    """dom0's real memory and vCPUs, where the hypervisor knows them (Xen: ctx.services["control_domain"])."""
    dom0 = ctx.services.get("control_domain")
    store = ctx.store
    if dom0 is None or vm == NULL_REF or not store.exists("VM", vm):
        return
    memory, vcpus = dom0
    memory_fields = ("memory_static_max", "memory_dynamic_max", "memory_dynamic_min", "memory_target")
    store.update("VM", vm, {**dict.fromkeys(memory_fields, memory), "VCPUs_max": vcpus, "VCPUs_at_startup": vcpus})
    metrics = store.get("VM", vm)["metrics"]
    if metrics != NULL_REF and store.exists("VM_metrics", metrics):
        store.update("VM_metrics", metrics, {"memory_actual": memory, "VCPUs_number": vcpus})
