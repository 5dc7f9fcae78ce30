"""CLI fields that are not one API field: values xe derives from several (the `x` getters)."""

from __future__ import annotations

from pyxapi.cli.errors import ApiFailure
from pyxapi.cli.records import NID, NULL, scalar

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pyxapi.cli.records import CliRecord
    from pyxapi.cli.table import FieldSpec


def value(r: CliRecord, f: FieldSpec, name: str) -> str:
    return _VALUES[name](r)


def pairs(r: CliRecord, f: FieldSpec, name: str) -> list[tuple[str, str]]:
    if name == "vcpus_utilisation":
        return _vcpu_pairs(r)
    return []


def _last_boot_record(r: CliRecord) -> str:
    return "'" + str(r.rec.get("last_booted_record", "")) + "'"


def _vcpu_pairs(r: CliRecord) -> list[tuple[str, str]]:
    metrics = r.resolver.record("VM_metrics", str(r.rec.get("metrics", NULL)))
    usage = (metrics or {}).get("VCPUs_utilisation") or {}
    return [(str(k), scalar(v, "float")) for k, v in usage.items()]


def _vcpus_utilisation(r: CliRecord) -> str:
    return "; ".join(f"{k}: {v}" for k, v in _vcpu_pairs(r))


def _pif_metrics(r: CliRecord) -> dict | None:  # type: ignore[type-arg]
    return r.resolver.record("PIF_metrics", str(r.rec.get("metrics", NULL)))


def _pif_speed(r: CliRecord) -> str:
    m = _pif_metrics(r)
    return f"{int(m['speed'])} Mbit/s" if m else NID


def _pif_duplex(r: CliRecord) -> str:
    m = _pif_metrics(r)
    if not m:
        return NID
    return "full" if m.get("duplex") else "half" if m.get("carrier") else "unknown"


def _io_kbs(r: CliRecord) -> str:
    # Per-device throughput comes from RRD data sources, which this toolstack does not keep yet.
    return "<unknown>"


def _vbd_attachable(r: CliRecord) -> str:
    try:
        r.resolver.api.call("VBD.assert_attachable", r.ref)
    except ApiFailure as e:
        return f"false (error: Server_error({e.code}, [ {'; '.join(e.params)} ]))"
    return "true"


def _vbd_vdi_name(r: CliRecord) -> str:
    if r.rec.get("empty"):
        return "<EMPTY>"
    return r.resolver.name("VDI", str(r.rec.get("VDI", NULL)))


def _sr_host(r: CliRecord) -> str:
    pbds = r.rec.get("PBDs") or []
    if len(pbds) > 1:
        return "<shared>"
    if not pbds:
        return NID
    pbd = r.resolver.record("PBD", str(pbds[0]))
    return r.resolver.name("host", str(pbd.get("host", NULL))) if pbd else NID


def _supported_sr_types(r: CliRecord) -> str:
    try:
        return "; ".join(r.resolver.api.call("SR.get_supported_types"))
    except ApiFailure:
        return "<unknown>"


def _max_resolution(r: CliRecord) -> str:
    return f"{r.rec.get('max_resolution_x', 0)}x{r.rec.get('max_resolution_y', 0)}"


def _variant_host(r: CliRecord) -> str:
    driver = r.resolver.record("Host_driver", str(r.rec.get("driver", NULL)))
    return r.resolver.uuid("host", str(driver.get("host", NULL))) if driver else NID


_VALUES = {
    "last_boot_record": _last_boot_record,
    "vcpus_utilisation": _vcpus_utilisation,
    "pif_speed": _pif_speed,
    "pif_duplex": _pif_duplex,
    "io_kbs": _io_kbs,
    "vbd_attachable": _vbd_attachable,
    "vbd_vdi_name": _vbd_vdi_name,
    "sr_host": _sr_host,
    "supported_sr_types": _supported_sr_types,
    "max_resolution": _max_resolution,
    "variant_host": _variant_host,
}
