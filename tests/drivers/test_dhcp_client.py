"""The lease report of the one-shot DHCP client (busybox udhcpc's script output), parsed."""

from __future__ import annotations

from pyxapi.drivers.network.dhcp_client import DEFAULT_LEASE_SECONDS, ClientLease, parse_report


def test_a_full_report() -> None:
    out = (
        "udhcpc: started\n"
        "PYXAPI-LEASE ip=10.88.0.51 subnet=255.255.255.0 router=10.88.0.1 dns=10.88.0.53,9.9.9.9 lease=600\n"
    )
    lease = parse_report(out)
    assert lease == ClientLease("10.88.0.51", "255.255.255.0", "10.88.0.1", ("10.88.0.53", "9.9.9.9"), 600)
    assert lease is not None and lease.cidr == "10.88.0.51/24"


def test_missing_or_odd_lease_times_fall_back() -> None:
    for lease in ("", "lease=", "lease=0", "lease=-5", "lease=soon"):
        parsed = parse_report(f"PYXAPI-LEASE ip=10.0.0.2 subnet=255.0.0.0 router= dns= {lease}\n")
        assert parsed is not None and parsed.seconds == DEFAULT_LEASE_SECONDS and parsed.router == ""
        assert parsed.dns == ()


def test_no_usable_lease() -> None:
    assert parse_report("udhcpc: no lease, failing\n") is None
    assert parse_report("PYXAPI-LEASE ip=300.1.1.1 subnet=255.255.255.0 lease=60\n") is None
