"""xe's object selectors: `vm=NAME_OR_UUID` (host=, sr=) plus any CLI field as a filter, and
running an operation on what matched (one, or several with --multiple)."""

from __future__ import annotations

from pyxapi.cli.argv import STD_PARAMS
from pyxapi.cli.errors import ApiFailure, CliFailure, MultipleFailure
from pyxapi.cli.records import CliRecord, filter_records
from pyxapi.cli.table import class_spec

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from pyxapi.cli.ctx import Ctx

# The pseudo-field each selector matches: API fields compared with the value.
_PSEUDO = {"vm": ("uuid", "name__label"), "host": ("uuid", "hostname", "name__label"), "sr": ("uuid", "name__label")}


def _where(fields: tuple[str, ...], value: str) -> str:
    v = value.replace("\\", "\\\\").replace('"', '\\"')
    return " or ".join(f'(field "{f}"="{v}")' for f in fields)


def select(
    c: Ctx,
    cli: str,
    ignore: tuple[str, ...] | list[str] = (),
    include_templates: bool = False,
    include_control: bool = False,
) -> list[CliRecord]:
    """The objects of class `cli` (vm, host, sr) the command line selects."""
    spec = class_spec(cli)
    filters = list(c.params.items())
    if cli == "vm":
        if not include_templates:
            filters.insert(0, ("is-a-template", "false"))
        if not include_control:
            filters.insert(0, ("is-control-domain", "false"))
    where = "true"
    chosen = c.params.get(cli)
    if chosen is not None:
        where = _where(_PSEUDO[cli], chosen)
        filters = [(k, v) for k, v in filters if k != cli]
    records = c.api.call(f"{spec.api}.get_all_records_where", where)
    found = [CliRecord(spec, ref, rec, c.resolver) for ref, rec in records.items()]
    skip = set(STD_PARAMS) | set(ignore)
    for key, value in filters:
        if key.split(":", 1)[0] in skip:
            continue
        try:
            found = filter_records(found, key, value)
        except ApiFailure as e:
            if e.code == "Missing parameter" and cli == "vm":
                raise CliFailure(
                    f"Parameter '{key}' is not a field of the VM class. Failed to select VM for operation."
                ) from None
            raise
        except CliFailure as e:
            if cli == "vm" and str(e).startswith("Unknown field"):
                raise CliFailure(
                    f"Parameter '{key}' is not a field of the VM class. Failed to select VM for operation."
                ) from None
            raise
    return found


_NONE = {"vm": "No matching VMs found", "host": "No matching hosts found", "sr": "No matching hosts found"}
_MANY = {"vm": "VMs", "host": "hosts", "sr": "SRs"}


def do_op(
    c: Ctx,
    cli: str,
    op: Callable[[CliRecord], Any],
    ignore: tuple[str, ...] | list[str] = (),
    multiple: bool = True,
    include_templates: bool = False,
    include_control: bool = False,
) -> list[Any]:
    """Run `op` on each selected object, as xe's do_vm_op / do_host_op / do_sr_op."""
    found = select(c, cli, ignore, include_templates, include_control)
    if not found:
        raise CliFailure(_NONE[cli])
    if len(found) == 1:
        return [op(found[0])]
    if multiple and c.flag("multiple"):
        return _each(op, found)
    noun = _MANY[cli]
    matches = "Multiple matches VMs found" if cli == "vm" else f"Multiple matching {noun} found"
    if not multiple:
        one = "VM" if cli == "vm" else noun[:-1] if cli == "host" else "SR"
        raise CliFailure(f"{matches}. Operation can only be performed on one {one} at a time")
    raise CliFailure(f"{matches}. --multiple required to complete the operation")


def _each(op: Callable[[CliRecord], Any], found: list[CliRecord]) -> list[Any]:
    from pyxapi.cli.report import error_text

    results, failures = [], []
    for r in found:
        try:
            results.append(op(r))
        except ApiFailure as e:
            failures.append((str(r.rec.get("uuid", "")), error_text(e, r.resolver)))
        except CliFailure as e:
            failures.append((str(r.rec.get("uuid", "")), str(e)))
    if failures:
        raise MultipleFailure(failures)
    return results
