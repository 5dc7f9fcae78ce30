"""pytest plugin for the contract run inside the Xen test host's dom0 (`-p tests.xenhost.plugin`).

The contract suite's per-test limit (180 s) is sized for QEMU guests; nested Xen under TCG on a
shared two-core machine boots guests several times slower, so the `xen` cases get a longer, still
bounded, limit.
"""

from __future__ import annotations

import pytest

XEN_TEST_TIMEOUT = 900


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "[xen" in item.nodeid:
            item.add_marker(pytest.mark.timeout(XEN_TEST_TIMEOUT))
