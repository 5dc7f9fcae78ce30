"""OpenFlow rules for VIF locking and rate limits on an Open vSwitch bridge.

Everything not matched here falls through to the bridge's default ``priority=0 actions=NORMAL``
flow. A VIF's flows share a cookie derived from its device name, so they can be deleted
together; its meter id is its OpenFlow port number, unique on the bridge.
"""

from __future__ import annotations

import zlib

from .base import VifSpec

_COOKIE_TAG = 0x7079 << 32  # "py": keeps our cookies apart from anyone else's


def cookie(device: str) -> int:
    return _COOKIE_TAG | zlib.crc32(device.encode())


def meter(spec: VifSpec, meter_id: int) -> str | None:
    if not spec.rate_kbps or spec.locking.effective() == "disabled":
        return None
    burst = max(spec.rate_kbps // 10, 24)
    return f"meter={meter_id},kbps,burst,band=type=drop,rate={spec.rate_kbps},burst_size={burst}"


def flows(spec: VifSpec, ofport: int, meter_id: int) -> list[str]:
    """Flows for what the guest behind ``ofport`` sends."""
    mode = spec.locking.effective()
    head = f"cookie={cookie(spec.device):#x},in_port={ofport}"
    if mode == "disabled":
        return [f"{head},priority=40000,actions=drop"]
    act = f"meter:{meter_id},normal" if spec.rate_kbps else "normal"
    if mode == "unlocked":
        return [f"{head},priority=30000,actions={act}"] if spec.rate_kbps else []
    mac = spec.mac
    out = []
    for ip in spec.locking.ipv4_allowed:
        out.append(f"{head},priority=32000,arp,dl_src={mac},arp_sha={mac},arp_spa={ip},actions={act}")
        out.append(f"{head},priority=32000,ip,dl_src={mac},nw_src={ip},actions={act}")
    # A guest asks DHCP for its address before it has one.
    out.append(f"{head},priority=32000,udp,dl_src={mac},nw_src=0.0.0.0,tp_src=68,tp_dst=67,actions={act}")
    for ip6 in spec.locking.ipv6_allowed:
        out.append(f"{head},priority=32000,ipv6,dl_src={mac},ipv6_src={ip6},actions={act}")
    out.append(f"{head},priority=31000,actions=drop")
    return out
