"""`xe help`, `xe help --all`, `xe help <command>` (and `xe <command> --help`), laid out as
xe lays them out; descriptions are pyxapi's own (the handlers' docstrings)."""

from __future__ import annotations

from pyxapi.cli import table

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pyxapi.cli.argv import Params
    from pyxapi.cli.printer import Printer

USAGE = """Usage:
  {argv0} <command>
    [ -s <server> ]            pyxapi (or XenServer) host
    [ -p <port> ]              port number
    [ -u <username> -pw <password> | -pwf <password file> ]
                               User authentication (password or file)
    [ --nossl ]                Disable SSL/TLS
    [ --debug ]                Enable debug output
    [ --debug-on-fail ]        Enable debug output only on failure
    [ --traceparent <value> ]  Distributed tracing context
    [ <other arguments> ... ]  Command-specific options

To get help on a specific command:
  {argv0} help <command>

"""

SELECTORS = {
    "v": (
        "<vm-selectors>",
        " Select VMs with vm=<name or uuid> and/or any field=value filter (see 'xe vm-list params=all'"
        " for the fields, e.g. power-state=halted). When several VMs match, --multiple is required;"
        " with no selector at all the operation applies to every VM.",
    ),
    "r": (
        "<sr-selectors>",
        " Select SRs with sr=<name or uuid> and/or any field=value filter (see 'xe sr-list params=all')."
        " When several SRs match, --multiple is required.",
    ),
    "o": (
        "<host-selectors>",
        " Select hosts with host=<name, hostname or uuid> and/or any field=value filter (see"
        " 'xe host-list params=all'). When several hosts match, --multiple is required.",
    ),
}

GENERATED_HELP = {
    "list": "List the {plural}, keeping those that match every field=value given (map-field:key=value"
    " for maps, set-field:contains=value for sets). params=a,b,c picks the fields shown (params=all"
    " for every field); --minimal prints just the first field of each, comma-separated.",
    "param-list": "Show every field of the {noun} with this uuid.",
    "param-get": "Print one field of the {noun} (param-name=); for a map field, param-key= picks one key.",
    "param-set": "Set fields of the {noun}: field=value, or map-field:key=value for one key of a map.",
    "param-add": "Add to a set field (param-key=<member>) or to a map field (key=value pairs) of the {noun}.",
    "param-remove": "Remove a member (set) or a key (map) of a field of the {noun}.",
    "param-clear": "Empty a field of the {noun} (a set, a map, or a writable field).",
}
_STD_HELP_PARAMS = {"server", "username", "password", "port", "minimal", "all"}


def usage_text(argv0: str = "xe") -> str:
    return USAGE.format(argv0=argv0)


def _make_list(names: list[str]) -> list[str]:
    """Comma-separated names, four spaces in, wrapped before 75 columns."""
    lines, cur = [], "    " + names[0]
    for name in names[1:]:
        if len(cur) + len(name) > 74:
            lines.append(cur)
            cur = "    " + name
        else:
            cur += ", " + name
    return [*lines, cur]


def description(spec: table.CommandSpec) -> str:
    if spec.generated:
        cli, op = spec.generated
        plural = "patches" if cli == "patch" else cli + "s"
        text = GENERATED_HELP[op].format(plural=plural, noun=cli)
    else:
        from pyxapi.cli.commands import registry

        handler = registry().get(spec.name)
        doc = (handler.__doc__ or "").strip() if handler else ""
        text = " ".join(doc.split()) if doc else "Not implemented by pyxapi's xe yet."
    for flag, (_, info) in SELECTORS.items():
        if flag in spec.flags:
            return text + info
    return text


def command_help(printer: Printer, name: str) -> None:
    spec = table.command(name)
    if spec is None:
        printer.lines([f"Unknown command '{name}'"])
        return
    optional = list(spec.optn) + [
        SELECTORS[f][0] for f in "vro" if f in spec.flags and SELECTORS[f][0] not in spec.optn
    ]
    printer.table(
        [
            [
                ("command name        ", name),
                ("reqd params     ", ", ".join(spec.reqd)),
                ("optional params ", ", ".join(optional)),
                ("description     ", description(spec)),
            ]
        ]
    )


def run(printer: Printer, params: Params, argv0: str = "xe") -> None:
    asked = [k for k in params if k not in _STD_HELP_PARAMS]
    if asked:
        for name in asked:
            command_help(printer, name)
        return
    visible = [n for n in table.command_names() if "h" not in table.flags(n)]
    head = usage_text(argv0)
    if params.flag("all"):
        if printer.minimal:
            printer.lines(visible)
            return
        hosts = [n for n in visible if n.startswith("host-")]
        vms = [n for n in visible if n.startswith("vm-")]
        other = [n for n in visible if not n.startswith(("host-", "vm-"))]
        printer.lines([head + "Full command list\n-----------------\n"])
        for group in (hosts, [""], vms, [""], other):
            printer.lines(_make_list(group))
        return
    standard = [n for n in visible if "s" in table.flags(n)]
    if printer.minimal:
        printer.lines(standard)
        return
    printer.lines(
        [
            head
            + f"To get a full listing of commands:\n  {argv0} help --all\n\nCommon command list\n-------------------\n"
        ]
    )
    printer.lines(_make_list(standard))
