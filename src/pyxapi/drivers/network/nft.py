"""VIF locking and rate limits on a Linux bridge, as nftables rules in the bridge family.

One table, ``bridge pyxapi``. Two verdict maps keyed by interface name hook VIFs in
without rule handles: ``vif_in`` jumps to a per-VIF chain for what the guest sends,
``vif_out`` drops what would reach a disabled VIF. Allowed frames ``return`` rather
than ``accept`` so that the ``vif_out`` lookup still runs for the receiving VIF.
Each change is one ``nft -f`` transaction, so a VIF is never half-configured.
"""

from __future__ import annotations

from .base import VifSpec
from .proc import run

TABLE = "pyxapi"

_HOOKS = {
    "forward": ["iifname vmap @vif_in", "oifname vmap @vif_out"],
    "input": ["iifname vmap @vif_in"],
    "output": ["oifname vmap @vif_out"],
}


def setup_script() -> str:
    """Create the table and maps if missing, and (re)create the base chains.

    Rebuilding the base chains is deliberate: on the kernels measured here, bridge-family
    hooks registered in a namespace before any bridge ever existed there never see a
    packet. They hold nothing but the map lookups, so recreating them is free.
    """
    t = f"bridge {TABLE}"
    lines = [
        f"add table {t}",
        f"add map {t} vif_in {{ type ifname : verdict; }}",
        f"add map {t} vif_out {{ type ifname : verdict; }}",
    ]
    for hook, rules in _HOOKS.items():
        decl = f"{{ type filter hook {hook} priority 0; policy accept; }}"
        lines += [f"add chain {t} {hook} {decl}", f"flush chain {t} {hook}", f"delete chain {t} {hook}"]
        lines += [f"add chain {t} {hook} {decl}", *(f"add rule {t} {hook} {r}" for r in rules)]
    return "\n".join(lines) + "\n"


def chain_name(device: str) -> str:
    return f"vif-{device}"


def rate_rule(rate_kbps: int) -> str:
    # kbps are kilobits; nft counts bytes. The burst lets a short TCP window through.
    rate = rate_kbps * 125
    burst = max(rate // 10, 3000)
    return f"limit rate over {rate} bytes/second burst {burst} bytes drop"


def vif_rules(spec: VifSpec) -> list[str]:
    """Rules of the VIF's chain, for what the guest sends. Empty: no chain needed."""
    mode = spec.locking.effective()
    rules: list[str] = []
    if mode == "disabled":
        return ["drop"]
    if spec.rate_kbps:
        rules.append(rate_rule(spec.rate_kbps))
    if mode == "locked":
        v4 = ", ".join(spec.locking.ipv4_allowed)
        v6 = ", ".join(spec.locking.ipv6_allowed)
        rules.append(f"ether saddr != {spec.mac} drop")
        if v4:
            rules.append(f"arp saddr ether {spec.mac} arp saddr ip {{ {v4} }} return")
            rules.append(f"ip saddr {{ {v4} }} return")
        # A guest asks DHCP for its address before it has one.
        rules.append("ip saddr 0.0.0.0 udp sport 68 udp dport 67 return")
        if v6:
            rules.append(f"ip6 saddr {{ {v6} }} return")
        rules.append("drop")
    return rules


def _unhook(device: str) -> list[str]:
    # Adding the exact element first makes deleting it safe when it was never there:
    # vif_in only ever maps X to 'jump vif-X', vif_out only ever maps X to 'drop'.
    c = chain_name(device)
    return [
        f"add chain bridge {TABLE} {c}",
        f'add element bridge {TABLE} vif_in {{ "{device}" : jump {c} }}',
        f'add element bridge {TABLE} vif_out {{ "{device}" : drop }}',
        f'delete element bridge {TABLE} vif_in {{ "{device}" }}',
        f'delete element bridge {TABLE} vif_out {{ "{device}" }}',
    ]


def apply_script(spec: VifSpec) -> str:
    c = chain_name(spec.device)
    rules = vif_rules(spec)
    lines = _unhook(spec.device)
    if not rules:
        lines.append(f"delete chain bridge {TABLE} {c}")
        return "\n".join(lines) + "\n"
    lines.append(f"flush chain bridge {TABLE} {c}")
    lines += [f"add rule bridge {TABLE} {c} {r}" for r in rules]
    lines.append(f'add element bridge {TABLE} vif_in {{ "{spec.device}" : jump {c} }}')
    if spec.locking.effective() == "disabled":
        lines.append(f'add element bridge {TABLE} vif_out {{ "{spec.device}" : drop }}')
    return "\n".join(lines) + "\n"


def remove_script(device: str) -> str:
    lines = [*_unhook(device), f"flush chain bridge {TABLE} {chain_name(device)}"]
    lines.append(f"delete chain bridge {TABLE} {chain_name(device)}")
    return "\n".join(lines) + "\n"


async def setup(netns: str | None) -> None:
    await run(["nft", "-f", "-"], netns=netns, stdin=setup_script())


async def apply(netns: str | None, spec: VifSpec) -> None:
    await run(["nft", "-f", "-"], netns=netns, stdin=apply_script(spec))


async def remove(netns: str | None, device: str) -> None:
    await run(["nft", "-f", "-"], netns=netns, stdin=remove_script(device))


async def chain_rules(netns: str | None, device: str) -> str:
    """The VIF chain as nft prints it ('' when absent), for inspection and tests."""
    res = await run(["nft", "list", "chain", "bridge", TABLE, chain_name(device)], netns=netns, check=False)
    return res.stdout if res.returncode == 0 else ""
