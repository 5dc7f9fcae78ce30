"""Printing a failure the way xe does: a known API error as its human line plus one
`name: value` line per parameter (references shown as `uuid (name)`), an unknown one as
`Error code:` / `Error parameters:`; everything on stderr."""

from __future__ import annotations

from pyxapi.cli import table
from pyxapi.cli.errors import ApiFailure

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pyxapi.cli.records import Resolver

# A parameter's name says which class its reference belongs to.
_PARAM_CLASS = {
    "vm": "VM",
    "snapshot": "VM",
    "template": "VM",
    "host": "host",
    "sr": "SR",
    "vdi": "VDI",
    "vbd": "VBD",
    "vif": "VIF",
    "network": "network",
    "pif": "PIF",
    "pbd": "PBD",
    "task": "task",
    "pool": "pool",
    "bond": "Bond",
    "vlan": "VLAN",
    "console": "console",
}
_NULL = "OpaqueRef:NULL"


def ref_convert(value: str, param: str, resolver: Resolver | None) -> str:
    cls = _PARAM_CLASS.get(param.lower())
    if resolver is None or cls is None or not value.startswith("OpaqueRef:") or value == _NULL:
        return value
    rec = resolver.record(cls, value)
    if not rec or "uuid" not in rec:
        return value
    name = rec.get("name_label")
    return f"{rec['uuid']} ({name})" if name is not None else str(rec["uuid"])


def error_lines(e: ApiFailure, resolver: Resolver | None = None) -> list[str]:
    from pyxapi.cli.messages import MESSAGES

    text = MESSAGES.get(e.code)
    names = table.error_params(e.code)
    if text is None or names is None:
        return [f"Error code: {e.code}", f"Error parameters: {', '.join(e.params)}"]
    lines = [text]
    values = list(e.params)
    for i in range(max(len(names), len(values))):
        if i < len(names) and i < len(values):
            lines.append(f"{names[i]}: {ref_convert(values[i], names[i], resolver)}")
        elif i < len(names):
            lines.append(f"{names[i]}: <unknown>")
        else:
            lines.append(f"<extra>: {values[i]}")
    return lines


def error_text(e: ApiFailure, resolver: Resolver | None = None) -> str:
    return "\n".join(error_lines(e, resolver))
