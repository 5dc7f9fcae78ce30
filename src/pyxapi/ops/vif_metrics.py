"""Per-VIF traffic rates as the VM data sources xapi names them: vif_<device>_rx and vif_<device>_tx.

xapi removed VIF_metrics' io_read_kbs / io_write_kbs (and the class itself, in favour of RRDs); the
rates now live in the VM's data sources, read with VM.get_data_sources / VM.query_data_source. Here
they come from the VIF's tap counters in the network driver, seen from the guest (rx: what the guest
received). A rate is the average since the VM's previous reading, taken on demand: the first reading
of a VM (or one after a long pause) samples twice, a second apart.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from pyxapi.api.dispatch import Call, Handler
from pyxapi.context import Context
from pyxapi.drivers.network import base as net
from pyxapi.engine.vm_lifecycle import VMView, check
from pyxapi.model.errors import INTERNAL_ERROR, ApiError
from pyxapi.ops import vif_runtime
from pyxapi.wire.marshal import now_datetime

SAMPLE_GAP = 1.0  # seconds between the two samples of a first reading
STALE_AFTER = 60.0  # an older previous reading is no average of "now"
MAX_RATE = 1e12  # bytes/s: the clip xapi's RRDs would apply, far above any NIC here


@dataclass
class _Reading:
    at: float
    counters: dict[str, net.Counters]  # VIF device number -> tap counters


@dataclass
class VifRates:
    """The previous reading per VM uuid (kept in ctx.services, made on first use)."""

    last: dict[str, _Reading] = field(default_factory=dict)


def _state(ctx: Context) -> VifRates:
    state = ctx.services.setdefault("vif_rates", VifRates())
    assert isinstance(state, VifRates)
    return state


async def _counters(ctx: Context, vm: str) -> dict[str, net.Counters]:
    store = ctx.store
    driver = vif_runtime.runtime(ctx).driver
    out: dict[str, net.Counters] = {}
    for vif in store.get("VM", vm)["VIFs"]:
        rec = store.get("VIF", vif)
        if not rec["currently_attached"]:
            continue
        try:
            out[rec["device"]] = await driver.get_counters(vif_runtime.tap_of(ctx, vif))
        except net.NetworkError:
            continue  # its tap is gone (the guest is going away): no source for it
    return out


async def rates(ctx: Context, vm: str) -> dict[str, float]:
    """Data source name -> bytes per second, for each attached VIF of a running VM."""
    check(VMView.of(vm, ctx.store.get("VM", vm)), "data_source_op")
    uuid = ctx.store.get("VM", vm)["uuid"]
    state = _state(ctx)
    previous = state.last.get(uuid)
    now = _Reading(time.monotonic(), await _counters(ctx, vm))
    if previous is None or now.at - previous.at > STALE_AFTER or now.at - previous.at < 0.1:
        previous = now
        await asyncio.sleep(SAMPLE_GAP)
        now = _Reading(time.monotonic(), await _counters(ctx, vm))
    state.last[uuid] = now
    seconds = now.at - previous.at
    out: dict[str, float] = {}
    for device, c in sorted(now.counters.items(), key=lambda kv: int(kv[0])):
        before = previous.counters.get(device, c)
        # Host side tx is what reached the guest; a tap made anew (counters reset) counts from zero.
        received = c.tx_bytes - before.tx_bytes if c.tx_bytes >= before.tx_bytes else c.tx_bytes
        sent = c.rx_bytes - before.rx_bytes if c.rx_bytes >= before.rx_bytes else c.rx_bytes
        out[f"vif_{device}_rx"] = min(received / seconds, MAX_RATE)
        out[f"vif_{device}_tx"] = min(sent / seconds, MAX_RATE)
    _touch_metrics(ctx, vm)
    return out


def _touch_metrics(ctx: Context, vm: str) -> None:
    """VIF_metrics.last_updated, as xapi keeps it (the class is hidden from the API)."""
    store = ctx.store
    with store.transaction():
        for vif in store.get("VM", vm)["VIFs"]:
            metrics = store.get("VIF", vif)["metrics"]
            if store.exists("VIF_metrics", metrics):
                store.set_field("VIF_metrics", metrics, "last_updated", now_datetime())


def _source(name: str, value: float) -> dict[str, Any]:
    _, device, direction = name.split("_")
    verb = "received" if direction == "rx" else "sent"
    return {
        "name_label": name,
        "name_description": f"Bytes per second {verb} on virtual interface number '{device}'",
        "enabled": True,
        "standard": True,
        "units": "B/s",
        "min": 0.0,
        "max": MAX_RATE,
        "value": value,
    }


async def get_data_sources(call: Call, vm: str) -> list[dict[str, Any]]:
    return [_source(name, value) for name, value in (await rates(call.ctx, vm)).items()]


async def query_data_source(call: Call, vm: str, data_source: str) -> float:
    values = await rates(call.ctx, vm)
    if data_source not in values:
        # What xapi's RRD daemon answers for a name the VM has no archive for.
        raise ApiError(INTERNAL_ERROR, f'Rrdd_error(Internal_error("Invalid_data_source: {data_source}"))')
    return values[data_source]


VM_MESSAGES: dict[str, Handler] = {
    "get_data_sources": get_data_sources,
    "query_data_source": query_data_source,
}
