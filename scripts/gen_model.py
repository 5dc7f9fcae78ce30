#!/usr/bin/env python3
"""Generate pyxapi's model data from the XenAPI reference in ../shared/xenapi/.

The reference's descriptions are deliberately left out: names, types, qualifiers,
defaults, roles and lifecycle states are facts to match; prose is not ours to copy.
Run: python3 scripts/gen_model.py [REFERENCE_DIR]  (default ../shared/xenapi)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "src" / "pyxapi" / "model" / "data" / "xenapi.json"


def _state(lifecycle: dict[str, Any]) -> str:
    return str(lifecycle.get("state", "published"))


def _roles_index(roles: list[str] | None, table: dict[tuple[str, ...], int]) -> int | None:
    """Role lists repeat thousands of times; store each distinct list once."""
    if roles is None:
        return None
    key = tuple(roles)
    if key not in table:
        table[key] = len(table)
    return table[key]


def convert(ref_dir: Path) -> dict[str, Any]:
    dm = json.loads((ref_dir / "datamodel.json").read_text())
    errs = json.loads((ref_dir / "errors.json").read_text())["errors"]
    role_sets: dict[tuple[str, ...], int] = {}
    classes = []
    for c in dm["classes"]:
        fields = []
        for f in c["fields"]:
            out: dict[str, Any] = {
                "name": f["name"],
                "type": f["type"],
                "qualifier": f["qualifier"],
                "state": _state(f["lifecycle"]),
                "get": _roles_index(f.get("getter_roles"), role_sets),
                "set": _roles_index(f.get("setter_roles"), role_sets),
            }
            for key in ("default", "persist", "internal_only"):
                if key in f:
                    out[key] = f[key]
            if "map_keys_roles" in f:
                out["map_keys_roles"] = f["map_keys_roles"]
            fields.append(out)
        messages = []
        for m in c["messages"]:
            msg: dict[str, Any] = {
                "name": m["name"],
                "params": [
                    {"name": p["name"], "type": p["type"], **({"default": p["default"]} if "default" in p else {})}
                    for p in m["params"]
                ],
                "result": m["result"],
                "errors": m["errors"],
                "session": m["session"],
                "static": m["static"],
                "async": m["async"],
                "implicit": m["implicit"],
                "roles": _roles_index(m.get("roles"), role_sets),
                "state": _state(m["lifecycle"]),
            }
            for key in ("auto_kind", "hidden", "pool_internal", "secret", "map_keys_roles", "forward_to"):
                if key in m:
                    msg[key] = m[key]
            messages.append(msg)
        classes.append(
            {
                "name": c["name"],
                "state": _state(c["lifecycle"]),
                "in_database": c["in_database"],
                "gen_constructor_destructor": c["gen_constructor_destructor"],
                "gen_events": c["gen_events"],
                "persist": c["persist"],
                "exposes_get_all": c["exposes_get_all"],
                "async_allowed": c["async_allowed"],
                "fields": fields,
                "messages": messages,
            }
        )
    return {
        "api_version": dm["meta"]["api_version"],
        "role_sets": [list(k) for k, _ in sorted(role_sets.items(), key=lambda kv: kv[1])],
        "roles": [{"name": r["name"], "internal": r["internal"]} for r in dm["roles"]],
        "classes": classes,
        "enums": {name: [v["name"] for v in values] for name, values in dm["enums"].items()},
        "relations": dm["relations"],
        "emergency_calls": dm["emergency_calls"],
        "releases": [
            {k: r[k] for k in ("code_name", "version_major", "version_minor", "branding")} for r in dm["releases"]
        ],
        "alert_messages": [a["name"] for a in dm["alert_messages"]],
        "http_actions": [
            {k: a[k] for k in ("name", "method", "uri", "query_args", "roles", "in_sdk")} for a in dm["http_actions"]
        ],
        "errors": {code: e["params"] for code, e in errs.items()},
    }


def main() -> None:
    ref_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "xenapi"
    data = convert(ref_dir)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(data, separators=(",", ":"), sort_keys=True) + "\n")
    print(f"wrote {OUT.relative_to(ROOT)}: {len(data['classes'])} classes, {len(data['errors'])} errors")


if __name__ == "__main__":
    main()
