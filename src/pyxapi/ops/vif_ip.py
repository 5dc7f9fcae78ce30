"""VIF.configure_ipv4 / VIF.configure_ipv6: the static address a guest agent is to give the
interface behind a VIF.

xapi's order of checks: with mode Static, the address must be CIDR (INVALID_CIDR_ADDRESS_SPECIFIED),
allowed by a locked VIF (ADDRESS_VIOLATES_LOCKING_CONSTRAINT) and the gateway, if any, an address of
the same family (INVALID_IP_ADDRESS_SPECIFIED); then, whatever the mode, the VM's guest agent must
advertise `feature-static-ip-setting` in its guest metrics (VM_LACKS_FEATURE), since only such an
agent applies the setting. The three fields are then written as given (the address list is the one
address, as xapi stores it).

No guest agent pyxapi talks to (qemu-guest-agent, Linux xe-guest-utilities) advertises the feature,
so nothing is pushed into a running guest: the record is what a later agent would read.
"""

from __future__ import annotations

from pyxapi.api.dispatch import Call, Handler
from pyxapi.db.store import Record, Store
from pyxapi.model.errors import ApiError
from pyxapi.ops import vif_spec
from pyxapi.ops.pif_ip import assert_valid_cidr, assert_valid_ip

GUEST_FEATURE = "feature-static-ip-setting"


def _assert_lock_allows(store: Store, vif: Record, version: int, cidr: str) -> None:
    network = vif_spec.network_of(store, vif)
    mode = vif_spec.locking(vif, network).effective() if network is not None else vif["locking_mode"]
    if mode != "locked":
        return
    address = cidr.partition("/")[0]
    if address not in vif[f"ipv{version}_allowed"]:
        raise ApiError("ADDRESS_VIOLATES_LOCKING_CONSTRAINT", cidr)


def _assert_guest_can_set_ip(store: Store, vm: str) -> None:
    rec = store.get("VM", vm)
    metrics = store.find("VM_guest_metrics", rec["guest_metrics"])
    if metrics is None or metrics["other"].get(GUEST_FEATURE) != "1":
        raise ApiError("VM_LACKS_FEATURE", vm)


def _configure(version: int) -> Handler:
    def configure(call: Call, vif: str, mode: str, address: str, gateway: str) -> None:
        store = call.ctx.store
        rec = store.get("VIF", vif)
        if mode == "Static":
            assert_valid_cidr(version, "address", address)
            _assert_lock_allows(store, rec, version, address)
            if gateway:
                assert_valid_ip(version, "gateway", gateway)
        _assert_guest_can_set_ip(store, rec["VM"])
        store.update(
            "VIF",
            vif,
            {
                f"ipv{version}_configuration_mode": mode,
                f"ipv{version}_addresses": [address],
                f"ipv{version}_gateway": gateway,
            },
        )

    return configure


MESSAGES: dict[str, Handler] = {"configure_ipv4": _configure(4), "configure_ipv6": _configure(6)}
