"""VM consoles: the `console` objects a running VM has, and where a console's bytes come from.

As in xapi, a VM gets its consoles when it starts (one `rfb` for the graphical console, one
`vt100` for the first serial port) and loses them when it halts or suspends. A console's
`location` is the URL a client tunnels through: `CONNECT` (or a WebSocket `GET`) on /console
of this host's HTTPS port; the handler is api/handlers/console.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyxapi.context import Context
from pyxapi.db.store import NULL_REF, Store, new_ref
from pyxapi.drivers.hypervisor.base import ConsoleInfo, HypervisorError
from pyxapi.model.errors import HANDLE_INVALID, UUID_INVALID, ApiError

RFB = "rfb"
VT100 = "vt100"
MANAGED_PROTOCOLS = (RFB, VT100)
CONSOLE_PATH = "/console"
# Addresses that mean "every interface": a client needs the host's own address instead.
WILDCARD_ADDRESSES = frozenset({"", "0.0.0.0", "::", "[::]"})


@dataclass(frozen=True, slots=True)
class ConsoleTarget:
    """What a console connection is relayed to."""

    console: str
    vm: str
    protocol: str
    socket_path: str


def public_address(ctx: Context) -> str:
    """The address clients reach this daemon on, as it goes in a URL.

    xapi uses the host's management address. When the daemon listens on one specific address
    only (127.0.0.1 by default), that address is the only one a client can reach, so it wins.
    """
    bound = ctx.config.host
    if bound not in WILDCARD_ADDRESSES:
        address = bound
    else:
        address = str(ctx.store.get("host", ctx.host_ref).get("address") or "127.0.0.1")
    if ":" in address and not address.startswith("["):
        address = f"[{address}]"  # an IPv6 literal
    return address


def location(ctx: Context, console: str) -> str:
    """`https://<address>[:port]/console?ref=<console>`; plain HTTP only when TLS is off."""
    if ctx.config.tls_port:
        scheme, port, default = "https", ctx.config.tls_port, 443
    else:
        scheme, port, default = "http", ctx.config.port, 80
    netloc = public_address(ctx) if port == default else f"{public_address(ctx)}:{port}"
    return f"{scheme}://{netloc}{CONSOLE_PATH}?ref={console}"


def ensure_consoles(ctx: Context, vm: str) -> None:
    """Give a running VM one console per managed protocol, reusing those it already has.

    Called again when the daemon re-adopts a running guest: nothing is duplicated, and a
    location left over from another address or port is brought up to date.
    """
    store = ctx.store
    existing: dict[str, str] = {}
    for ref in store.get("VM", vm)["consoles"]:
        rec = store.find("console", ref)
        if rec is not None and rec["protocol"] in MANAGED_PROTOCOLS:
            existing.setdefault(rec["protocol"], ref)
    with store.transaction():
        for protocol in MANAGED_PROTOCOLS:
            ref = existing.get(protocol)
            if ref is None:
                ref = new_ref()  # chosen first: the location names it
                store.create("console", {"protocol": protocol, "VM": vm, "location": location(ctx, ref)}, ref=ref)
            elif store.get("console", ref)["location"] != (url := location(ctx, ref)):
                store.set_field("console", ref, "location", url)


def destroy_consoles(ctx: Context, vm: str) -> None:
    store = ctx.store
    with store.transaction():
        for ref in list(store.get("VM", vm)["consoles"]):
            if store.exists("console", ref):
                store.destroy("console", ref)


def find_console(store: Store, ref: str | None, uuid: str | None) -> str:
    """The console a request names, the way xapi reads `/console?…`.

    `uuid` may be a VM's or a console's; `ref` a console's or a VM's. A VM stands for its
    default (rfb) console. Raises HANDLE_INVALID / UUID_INVALID when nothing matches.
    """
    if uuid:
        try:
            return default_console(store, store.by_uuid("VM", uuid))
        except ApiError as e:
            if e.code != UUID_INVALID:
                raise
        return store.by_uuid("console", uuid)
    if not ref:
        raise ApiError(HANDLE_INVALID, "console", "")
    if store.exists("console", ref):
        return ref
    if store.exists("VM", ref):
        return default_console(store, ref)
    raise ApiError(HANDLE_INVALID, "console", ref)


def default_console(store: Store, vm: str) -> str:
    for ref in store.get("VM", vm)["consoles"]:
        rec = store.find("console", ref)
        if rec is not None and rec["protocol"] == RFB:
            return str(ref)
    raise ApiError(HANDLE_INVALID, "console", vm)


def is_control_domain_console(store: Store, console: str) -> bool:
    vm = store.get("console", console)["VM"]
    return vm != NULL_REF and store.exists("VM", vm) and bool(store.get("VM", vm)["is_control_domain"])


async def console_target(ctx: Context, console: str) -> ConsoleTarget:
    """Where to relay a console's bytes; its VM must be running on this host (as xapi checks).

    Raises VM_BAD_POWER_STATE when the VM does not run here, HANDLE_INVALID when the console
    is gone or its hypervisor has no socket for that protocol.
    """
    store = ctx.store
    rec = store.get("console", console)
    vm = rec["VM"]
    vm_rec = store.get("VM", vm)
    if vm_rec["power_state"] != "Running" or vm_rec["resident_on"] != ctx.host_ref:
        raise ApiError("VM_BAD_POWER_STATE", vm, "running", str(vm_rec["power_state"]).lower())
    driver = ctx.services.get("hypervisor")
    if driver is None:
        raise ApiError(HANDLE_INVALID, "console", console)
    try:
        info: ConsoleInfo = await driver.console(vm_rec["uuid"])
    except HypervisorError as e:  # the domain went away between the check and now
        raise ApiError(HANDLE_INVALID, "console", console) from e
    path = info.vnc_socket if rec["protocol"] == RFB else info.serial_socket if rec["protocol"] == VT100 else None
    if not path:
        raise ApiError(HANDLE_INVALID, "console", console)
    return ConsoleTarget(console, vm, rec["protocol"], path)
