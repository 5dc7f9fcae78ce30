"""Hand-written messages, one module per class, wired here explicitly."""

from __future__ import annotations

from pyxapi.api.dispatch import Handler
from pyxapi.model.schema import Model
from pyxapi.ops import (
    blob,
    bond,
    event,
    host,
    message,
    network,
    pbd,
    pif,
    pif_ip,
    pif_management,
    role,
    secret,
    session,
    sr,
    task,
    vbd,
    vdi,
    vif,
    vif_metrics,
    vlan,
    vm,
    vm_clone,
    vm_snapshot,
    vm_snapshot_revert,
)
from pyxapi.xva import messages as xva_messages


def custom_handlers(model: Model) -> dict[str, dict[str, Handler]]:
    registry: dict[str, dict[str, Handler]] = {
        "session": dict(session.MESSAGES),
        "task": dict(task.MESSAGES),
        "event": dict(event.MESSAGES),
        "message": dict(message.MESSAGES),
        "blob": dict(blob.MESSAGES),
        "secret": dict(secret.MESSAGES),
        "role": dict(role.MESSAGES),
        "host": {**host.MESSAGES, **pif_management.HOST_MESSAGES},
        "pool": {**vlan.POOL_MESSAGES, **pif_management.POOL_MESSAGES},
        "network": dict(network.MESSAGES),
        "PIF": {**pif.MESSAGES, **pif_ip.MESSAGES},
        "VLAN": dict(vlan.MESSAGES),
        "Bond": dict(bond.MESSAGES),
        "VM": {**vm.MESSAGES, **vm_clone.MESSAGES, **vm_snapshot.MESSAGES, **vm_snapshot_revert.MESSAGES},
        "VIF": dict(vif.MESSAGES),
        "SR": dict(sr.MESSAGES),
        "PBD": dict(pbd.MESSAGES),
        "VDI": dict(vdi.MESSAGES),
        "VBD": dict(vbd.MESSAGES),
    }
    registry["VM"].update(xva_messages.MESSAGES)  # VM.import, VM.import_convert
    registry["VM"].update(vif_metrics.VM_MESSAGES)  # VM.get_data_sources, query_data_source: vif_N_rx/tx
    for cdef in model.classes.values():
        if "create_new_blob" in cdef.messages:
            registry.setdefault(cdef.name, {})["create_new_blob"] = blob.create_new_blob_for(cdef.name)
    return registry
