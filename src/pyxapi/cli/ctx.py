"""What a running command has at hand: the API, its parameters, the printer."""

from __future__ import annotations

from pyxapi.cli.argv import parse_bool
from pyxapi.cli.errors import ApiFailure, CliFailure, ParamError
from pyxapi.cli.records import Resolver

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from pyxapi.cli.argv import ClientOptions, Params
    from pyxapi.cli.printer import Printer
    from pyxapi.cli.session import Api

_UNITS = {"": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}


def parse_bytes(name: str, text: str) -> int:
    """xe sizes: a number with an optional KiB, MiB, GiB or TiB."""
    import re  # only for commands that take sizes: `re` costs xe's start-up 5 ms

    m = re.match(r"^\s*(\d+)\s*([KMGT]iB)?\s*$", text)
    if not m:
        raise CliFailure(
            f"Failed to parse parameter '{name}': expecting an integer with optional unit suffix (KiB, MiB, GiB, TiB)"
        )
    return int(m.group(1)) * _UNITS[m.group(2) or ""]


def parse_int(name: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise CliFailure(f"Failed to parse parameter '{name}': expecting an integer") from None


def parse_float(name: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise CliFailure(f"Failed to parse parameter '{name}': expecting a float") from None


class Ctx:
    def __init__(self, name: str, api: Api, params: Params, printer: Printer, opts: ClientOptions) -> None:
        self.name = name
        self.api = api
        self.params = params
        self.printer = printer
        self.opts = opts
        self.resolver = Resolver(api)

    # -- parameters -----------------------------------------------------------------------
    def req(self, key: str) -> str:
        value = self.params.get(key)
        if value is None:
            raise ParamError("Required parameter not found", key)
        return value

    def opt(self, key: str, default: str | None = None) -> str | None:
        return self.params.get(key, default)

    def flag(self, key: str, default: bool = False) -> bool:
        value = self.params.get(key)
        return default if value is None else parse_bool(key, value)

    def has(self, key: str) -> bool:
        return key in self.params

    def size(self, key: str) -> int:
        return parse_bytes(key, self.req(key))

    def integer(self, key: str) -> int:
        return parse_int(key, self.req(key))

    # -- the API --------------------------------------------------------------------------
    def call(self, method: str, *args: Any) -> Any:
        return self.api.call(method, *args)

    def by_uuid(self, cls: str, uuid: str) -> str:
        return str(self.api.call(f"{cls}.get_by_uuid", uuid))

    def uuid_of(self, cls: str, ref: str) -> str:
        return str(self.api.call(f"{cls}.get_uuid", ref))

    def pool(self) -> str:
        return str(self.api.call("pool.get_all")[0])

    def default_sr(self) -> str | None:
        """The pool's default SR, when it points at a live SR."""
        sr = str(self.api.call("pool.get_default_SR", self.pool()))
        try:
            self.api.call("SR.get_uuid", sr)
        except ApiFailure:
            return None
        return sr

    def host_by_name_or_id(self, name: str) -> str:
        hosts = self.api.call("host.get_all_records")
        for ref, rec in hosts.items():
            if name in (rec["name_label"], rec["uuid"]):
                return str(ref)
        raise CliFailure(f"Host {name} not found")

    def this_host(self) -> str:
        return str(self.api.call("session.get_this_host", self.api.session))

    def print_uuids(self, cls: str, refs: list[str]) -> None:
        self.printer.lines([self.uuid_of(cls, r) for r in refs])
