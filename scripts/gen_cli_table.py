#!/usr/bin/env python3
"""Generate the `xe` CLI's tables from the xe command reference and pyxapi's own model.

Inputs: ../shared/xenapi/xe-commands.json (command names, parameters, flags, the CLI field
names per class and their operations) and src/pyxapi/model/data/xenapi.json (the API's
classes, fields, types, messages and error parameters). Output: src/pyxapi/cli/data/, small
files so that `xe vm-list` reads only what it needs:

  commands.json        every command: required/optional params, flags, generated class/op
  classes/<cli>.json   one per generated class: how each CLI field is read, shown and set
  errors.json          error code -> parameter names (for xe's error layout)

Facts only (names, parameters, types): the reference's prose is not copied; the CLI's own
help texts live with the command implementations.
Run: python3 scripts/gen_cli_table.py [REFERENCE_DIR]  (default ../shared/xenapi)
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "src" / "pyxapi" / "model" / "data" / "xenapi.json"
OUT = ROOT / "src" / "pyxapi" / "cli" / "data"

NID = "<not in database>"
VM_CLASSES = ("vm", "template", "snapshot")

# Fields whose value does not come straight from the object's own record: where xapi's CLI reads
# them (a metrics object, an extra call, a derived value). Getter forms, read by cli/records.py:
#   ["f", field]                        the record's field
#   ["ru", field] / ["rn", field]       a ref field shown as the target's uuid / name-label
#   ["su", field]                       a set of refs shown as uuids
#   ["m", via, class, field, missing]   a field of the object `via` points to (metrics...)
#   ["call", message, kind, missing]    an API call on the object (expensive fields)
#   ["x", name]                         a derived value computed in cli/records.py
#   ["unknown"]                         not served by this toolstack
_VM_GUEST = {
    "os-version": "os_version",
    "netbios-name": "netbios_name",
    "PV-drivers-version": "PV_drivers_version",
    "PV-drivers-up-to-date": "PV_drivers_up_to_date",
    "memory": "memory",
    "disks": "disks",
    "networks": "networks",
    "services": "services",
    "PV-drivers-detected": "PV_drivers_detected",
    "other": "other",
    "live": "live",
    "guest-metrics-last-updated": "last_updated",
    "can-use-hotplug-vbd": "can_use_hotplug_vbd",
    "can-use-hotplug-vif": "can_use_hotplug_vif",
}
_VM_METRICS = {
    "memory-actual": ("memory_actual", NID),
    "hvm": ("hvm", "false"),
    "nomigrate": ("nomigrate", "false"),
    "nested-virt": ("nested_virt", "false"),
    "numa-optimised": ("numa_optimised", NID),
    "numa-nodes": ("numa_nodes", NID),
    "numa-node-memory": ("numa_node_memory", NID),
    "current-domain-type": ("current_domain_type", NID),
    "start-time": ("start_time", "<unknown time>"),
    "install-time": ("install_time", "<unknown time>"),
    "VCPUs-number": ("VCPUs_number", NID),
}


def _vm_overrides() -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for cli, f in _VM_GUEST.items():
        out[cli] = ["m", "guest_metrics", "VM_guest_metrics", f, NID]
    for cli, (f, missing) in _VM_METRICS.items():
        out[cli] = ["m", "metrics", "VM_metrics", f, missing]
    out.update(
        {
            "allowed-VBD-devices": ["call", "get_allowed_VBD_devices", "strings", ""],
            "allowed-VIF-devices": ["call", "get_allowed_VIF_devices", "strings", ""],
            "possible-hosts": ["call", "get_possible_hosts", "refs", ""],
            "last-boot-record": ["x", "last_boot_record"],
            "dom-id": ["f", "domid"],
            "VCPUs-utilisation": ["x", "vcpus_utilisation"],
            "cooperative": ["call", "get_cooperative", "bool", "true"],
        }
    )
    return out


OVERRIDES: dict[str, dict[str, list[Any]]] = {
    **dict.fromkeys(VM_CLASSES, _vm_overrides()),
    "host": {
        "memory-total": ["m", "metrics", "host_metrics", "memory_total", NID],
        "memory-free": ["m", "metrics", "host_metrics", "memory_free", NID],
        "host-metrics-live": ["m", "metrics", "host_metrics", "live", NID],
        "memory-free-computed": ["call", "compute_free_memory", "int", "<unknown>"],
    },
    "pif": {
        "carrier": ["m", "metrics", "PIF_metrics", "carrier", NID],
        "vendor-id": ["m", "metrics", "PIF_metrics", "vendor_id", NID],
        "vendor-name": ["m", "metrics", "PIF_metrics", "vendor_name", NID],
        "device-id": ["m", "metrics", "PIF_metrics", "device_id", NID],
        "device-name": ["m", "metrics", "PIF_metrics", "device_name", NID],
        "speed": ["x", "pif_speed"],
        "duplex": ["x", "pif_duplex"],
        "pci-bus-path": ["m", "metrics", "PIF_metrics", "pci_bus_path", NID],
        "io_read_kbs": ["x", "io_kbs"],
        "io_write_kbs": ["x", "io_kbs"],
    },
    "vif": {"io_read_kbs": ["x", "io_kbs"], "io_write_kbs": ["x", "io_kbs"]},
    "vbd": {
        "io_read_kbs": ["x", "io_kbs"],
        "io_write_kbs": ["x", "io_kbs"],
        "attachable": ["x", "vbd_attachable"],
        "vdi-name-label": ["x", "vbd_vdi_name"],
    },
    "vdi": {"crashdump-uuids": ["su", "crash_dumps"]},
    "sr": {"host": ["x", "sr_host"]},
    "pool": {
        "supported-sr-types": ["x", "supported_sr_types"],
        "license-state": ["call", "get_license_state", "map", "<unknown>"],
    },
    "role": {"name": ["f", "name_label"], "description": ["f", "name_description"]},
    "message": {"class": ["f", "cls"]},
    "patch": {"update": ["ru", "pool_update"]},
    "pgpu": {
        "vendor-name": ["m", "PCI", "PCI", "vendor_name", NID],
        "device-name": ["m", "PCI", "PCI", "device_name", NID],
        "pci-id": ["m", "PCI", "PCI", "pci_id", NID],
    },
    "vgpu": {"type-model-name": ["m", "type", "VGPU_type", "model_name", NID]},
    "vgpu-type": {"max-resolution": ["x", "max_resolution"]},
    "pvs-site": {
        "pvs-cache-storage-uuids": ["su", "cache_storage"],
        "pvs-server-uuids": ["su", "servers"],
        "pvs-proxy-uuids": ["su", "proxies"],
    },
    "pvs-server": {"pvs-site-uuid": ["ru", "site"]},
    "pvs-proxy": {"pvs-site-uuid": ["ru", "site"]},
    "pvs-cache-storage": {"pvs-site-uuid": ["ru", "site"]},
    "network-sriov": {"remaining-capacity": ["call", "get_remaining_capacity", "int", "<unknown>"]},
    "hostdriver-variant": {
        "driver-name": ["m", "driver", "Host_driver", "name", NID],
        "host-uuid": ["x", "variant_host"],
        "hw-present": ["f", "hardware_present"],
    },
}

# Sets xapi's CLI joins with ", " (kept so for compatibility) instead of "; ".
COMMA_SETS = {"tags", "purpose", "hosts", "after-apply-guidance", "required-cluster-stack"}
# Enum fields whose printed form differs from the wire value.
ENUM_CASE = {"vm_power_state": "lower", "console_protocol": "upper"}
# Sizes accept xe's unit suffixes (KiB, MiB, GiB, TiB).
BYTE_FIELDS = re.compile(r"^memory[_-]|^virtual[_-]size$|^physical[_-]size$")


def load(path: Path) -> Any:
    return json.loads(path.read_text())


class ModelIndex:
    def __init__(self, model: dict[str, Any]) -> None:
        self.classes = {c["name"]: c for c in model["classes"]}
        self.lower = {n.lower(): n for n in self.classes}
        self.errors: dict[str, list[str]] = model["errors"]

    def cls(self, name: str) -> dict[str, Any] | None:
        real = self.lower.get(name.lower())
        return self.classes[real] if real else None

    @staticmethod
    def fields(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {f["name"]: f for f in c["fields"]}

    @staticmethod
    def messages(c: dict[str, Any]) -> set[str]:
        return {m["name"] for m in c["messages"]}


def ref_target(type_text: str) -> str | None:
    m = re.fullmatch(r"(\w+) ref", type_text)
    return m.group(1) if m else None


def set_ref_target(type_text: str) -> str | None:
    m = re.fullmatch(r"(\w+) ref set", type_text)
    return m.group(1) if m else None


def resolve_getter(cli_name: str, fields: dict[str, dict[str, Any]]) -> list[Any] | None:
    """The default rules: `name-label` -> name_label, `network-uuid` -> network's uuid, ..."""
    lower = {k.lower(): k for k in fields}
    u = cli_name.replace("-", "_").lower()
    if u in lower:
        f = fields[lower[u]]
        if ref_target(f["type"]):
            return ["ru", f["name"]]
        if set_ref_target(f["type"]):
            return ["su", f["name"]]
        return ["f", f["name"]]
    for suffix, kind in (("_uuid", "ru"), ("_name_label", "rn")):
        if u.endswith(suffix) and u[: -len(suffix)] in lower:
            f = fields[lower[u[: -len(suffix)]]]
            if ref_target(f["type"]):
                return [kind, f["name"]]
    if u.endswith("_uuids"):
        base = u[: -len("_uuids")]
        for cand in (base, base + "s"):
            if cand in lower and set_ref_target(fields[lower[cand]]["type"]):
                return ["su", fields[lower[cand]]["name"]]
    return None


def value_type(getter: list[Any], fields: dict[str, dict[str, Any]], idx: ModelIndex) -> str:
    kind = getter[0]
    if kind in ("f", "ru", "rn", "su"):
        return str(fields[getter[1]]["type"]) if getter[1] in fields else "string"
    if kind == "m":
        target = idx.cls(getter[2])
        if target:
            tf = ModelIndex.fields(target)
            if getter[3] in tf:
                return str(tf[getter[3]]["type"])
    return "string"


def converter(type_text: str, api_field: str) -> str:
    """How a value typed on the command line becomes the API's value."""
    if ref_target(type_text):
        return "ref:" + str(ref_target(type_text))
    if set_ref_target(type_text):
        return "refs:" + str(set_ref_target(type_text))
    if type_text == "int":
        return "bytes" if BYTE_FIELDS.search(api_field) else "int"
    if type_text in ("bool", "float"):
        return type_text
    if type_text.startswith("enum "):
        return "enum:" + type_text[5:]
    if type_text.endswith(" set"):
        return "set"
    return "string"


def first_message(candidates: list[str], messages: set[str]) -> str | None:
    return next((m for m in candidates if m in messages), None)


def field_spec(cli: str, raw: dict[str, Any], cdef: dict[str, Any], idx: ModelIndex) -> dict[str, Any]:
    fields = ModelIndex.fields(cdef)
    messages = ModelIndex.messages(cdef)
    name = raw["name"]
    getter = OVERRIDES.get(cli, {}).get(name) or resolve_getter(name, fields) or ["unknown"]
    if getter[0] in ("f", "ru", "rn", "su") and getter[1] not in fields:
        getter = ["unknown"]
    spec: dict[str, Any] = {"n": name, "g": getter, "t": value_type(getter, fields, idx)}
    ops = raw.get("ops", [])
    if ops:
        spec["ops"] = ops
    for flag, key in (("hidden", "h"), ("expensive", "x"), ("deprecated", "d")):
        if raw.get(flag):
            spec[key] = 1
    if name == "MAC":
        spec["ci"] = 1
    if name in COMMA_SETS:
        spec["sep"] = ", "
    enum = spec["t"][5:].split(" ")[0] if spec["t"].startswith("enum ") else None
    if enum and enum in ENUM_CASE:
        spec["case"] = ENUM_CASE[enum]
    api = getter[1] if getter[0] in ("f", "ru", "su") else None
    if api:
        spec["api"] = api
        writers = {
            "set": [f"set_{api}"],
            "add_to_map": [f"add_to_{api}"],
            "remove_from_map": [f"remove_from_{api}"],
            "add_to_set": [
                f"add_{api}",
                f"add_to_{api}",
                f"add_{api.rstrip('s').replace('repositorie', 'repository')}",
            ],
            "remove_from_set": [
                f"remove_{api}",
                f"remove_from_{api}",
                f"remove_{api.rstrip('s').replace('repositorie', 'repository')}",
            ],
            "set_in_map": ["set_property"],
            "set_map": [f"set_{api}"],
            "clear_map": [f"set_{api}"],
        }
        calls = {op: first_message(writers[op], messages) for op in ops if op in writers}
        calls = {op: m for op, m in calls.items() if m}
        if calls:
            spec["w"] = calls
        if "set" in ops:
            spec["conv"] = converter(str(fields[api]["type"]), api)
    return spec


def class_spec(g: dict[str, Any], idx: ModelIndex) -> dict[str, Any]:
    cdef = idx.cls(g["api_class"])
    if cdef is None:
        raise SystemExit(f"gen_cli_table: class {g['api_class']} is not in the model")
    return {
        "cli": g["cli_class"],
        "api": cdef["name"],
        "filters": g["default_filters"],
        "list": g["default_list_params"],
        "fields": [field_spec(g["cli_class"], f, cdef, idx) for f in g["cli_fields"]],
    }


FLAG_BITS = {
    "Standard": "s",
    "Hidden": "h",
    "Vm_selectors": "v",
    "Host_selectors": "o",
    "Sr_selectors": "r",
    "Neverforward": "n",
    "Deprecated": "d",
}  # and "l": the command uses a host-local session


def command_index(commands: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for c in commands:
        flags = "".join(FLAG_BITS[f] for f in c["flags"] if f in FLAG_BITS)
        if "local_session" in c.get("impl_kind", ""):
            flags += "l"  # logs in with slave_local_login_with_password
        entry: dict[str, Any] = {"r": c["reqd"], "o": c["optn"]}
        if flags:
            entry["f"] = flags
        if c["generated"]:
            cli = c["cli_class"]
            entry["g"] = [cli, c["name"][len(cli) + 1 :]]
        out[c["name"]] = entry
    return dict(sorted(out.items()))


def enums_used(idx: ModelIndex, model_path: Path) -> dict[str, list[str]]:
    """Enum values, for turning what the user typed (any case) into the wire value."""
    enums = load(model_path)["enums"]
    used = set()
    for path in (OUT / "classes").glob("*.json"):
        for f in load(path)["fields"]:
            for t in (f.get("conv") or "", f["t"]):
                m = re.search(r"enum[: ](\w+)", t)
                if m:
                    used.add(m.group(1))
    return {name: list(enums[name]) for name in sorted(used) if name in enums}


def main() -> None:
    ref_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "xenapi"
    xe = load(ref_dir / "xe-commands.json")
    idx = ModelIndex(load(MODEL))
    (OUT / "classes").mkdir(parents=True, exist_ok=True)
    for g in xe["generated_classes"]:
        path = OUT / "classes" / f"{g['cli_class']}.json"
        path.write_text(json.dumps(class_spec(g, idx), separators=(",", ":")) + "\n")
    (OUT / "commands.json").write_text(json.dumps(command_index(xe["commands"]), separators=(",", ":")) + "\n")
    (OUT / "enums.json").write_text(json.dumps(enums_used(idx, MODEL), separators=(",", ":")) + "\n")
    (OUT / "errors.json").write_text(json.dumps(dict(sorted(idx.errors.items())), separators=(",", ":")) + "\n")
    meta = {"explicit": xe["meta"]["counts"]["explicit"], "generated": xe["meta"]["counts"]["generated"]}
    (OUT / "counts.json").write_text(json.dumps(meta) + "\n")
    print(f"gen_cli_table: {len(xe['commands'])} commands, {len(xe['generated_classes'])} classes -> {OUT}")


if __name__ == "__main__":
    main()
