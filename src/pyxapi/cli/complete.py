"""Shell completion for xe (xe-completion.bash calls `xe --complete "<line so far>"`):
command names, parameter names, and values — VM, host and SR names and uuids, field names,
enum and boolean values — read from the table and, for live objects, from the API."""

from __future__ import annotations

import shlex

from pyxapi.cli import table

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pyxapi.cli.argv import ClientOptions
    from pyxapi.cli.session import Api

SWITCHES = ("--minimal", "--force", "--multiple", "--all", "--progress")
# Parameters naming an object of a class by name or uuid (selectors and the like).
BY_NAME = {"vm": "vm", "on": "host", "host": "host", "sr": "sr", "template": "template"}
FILE_KEYS = ("filename", "file-name", "license-file", "certificate-file", "certificate", "private-key")


def split(line: str) -> tuple[list[str], str]:
    """The words before the cursor, and the one being typed."""
    try:
        words = shlex.split(line)
    except ValueError:  # an unterminated quote: complete inside it
        words = shlex.split(line + '"') if line.count('"') % 2 else shlex.split(line + "'")
    if not line or line[-1].isspace():
        return words, ""
    return words[:-1], words[-1] if words else ""


def command_class(command: str) -> str | None:
    """The CLI class a command works on: the longest class name it starts with."""
    classes = sorted(table.class_names(), key=len, reverse=True)
    return next((c for c in classes if command == c or command.startswith(c + "-")), None)


def param_names(command: str) -> list[str]:
    spec = table.command(command)
    if spec is None:
        return []
    names = [n for n in spec.reqd + spec.optn if not n.startswith("<")]
    if "v" in spec.flags or "o" in spec.flags or "r" in spec.flags:
        cls = {"v": "vm", "o": "host", "r": "sr"}[next(f for f in "vor" if f in spec.flags)]
        names += [f.name for f in table.class_spec(cls).fields if not f.hidden]
    seen: set[str] = set()
    return [n for n in names if not (n in seen or seen.add(n))]  # type: ignore[func-returns-value]


def _records(api: Api, cli: str) -> list[dict[str, object]]:
    spec = table.class_spec(cli)
    where = " and ".join(f'field "{k.replace("-", "_")}"="{v}"' for k, v in spec.filters.items()) or "true"
    return list(api.call(f"{spec.api}.get_all_records_where", where).values())


def live_values(opts: ClientOptions, cli: str, names: bool) -> list[str]:
    from pyxapi.cli.session import login

    api = login(opts)
    try:
        recs = _records(api, cli)
    finally:
        api.logout()
    values = [str(r["uuid"]) for r in recs]
    if names:
        values += [str(r["name_label"]) for r in recs if r.get("name_label")]
    return values


def values_for(opts: ClientOptions, command: str, key: str) -> list[str]:
    cls = command_class(command)
    if key == "param-name" and cls:
        return [f.name for f in table.class_spec(cls).fields if not f.hidden]
    if key == "uuid" and cls:
        return live_values(opts, cls, names=False)
    if key.endswith("-uuid") and key[: -len("-uuid")] in table.class_names():
        return live_values(opts, key[: -len("-uuid")], names=False)
    if key in BY_NAME:
        return live_values(opts, BY_NAME[key], names=True)
    if key == "cd-name":
        return [v for v in live_values(opts, "vdi", names=True) if v.lower().endswith(".iso")]
    if cls and key in table.class_spec(cls).by_name:
        f = table.class_spec(cls).by_name[key]
        if f.type == "bool":
            return ["true", "false"]
        if f.type.startswith("enum "):
            return list(table._load("enums.json").get(f.type[5:], []))
    if key in ("force", "multiple", "minimal", "live", "shared", "paused"):
        return ["true", "false"]
    return []


def complete(opts: ClientOptions, line: str) -> list[str]:
    words, cur = split(line)
    if len(words) <= 1:
        return [n for n in table.command_names() if n.startswith(cur) and "h" not in table.flags(n)]
    command = words[1]
    if cur.startswith("-"):
        return [s for s in SWITCHES if s.startswith(cur)]
    if "=" in cur:
        key, _, partial = cur.partition("=")
        if key in FILE_KEYS:
            return []  # the shell completes file names
        if key == "params" and (cls := command_class(command)):
            done, _, last = partial.rpartition(",")
            head = done + "," if done else ""
            fields = [f.name for f in table.class_spec(cls).fields if not f.hidden]
            return [f"{key}={head}{f}" for f in [*fields, "all"] if f.startswith(last)]
        try:
            found = values_for(opts, command, key)
        except Exception:
            found = []
        return [f"{key}={v.replace(' ', chr(92) + ' ')}" for v in sorted(set(found)) if v.startswith(partial)]
    given = {w.split("=", 1)[0] for w in words[2:]}
    return [f"{n}=" for n in param_names(command) if n.startswith(cur) and n not in given]
