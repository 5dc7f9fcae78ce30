"""pytest fixture for the Xen test host (import ``xen_host`` into a test module to use it).

The host is booted once per session and shared; it fails the test loudly (never skips) when the
machine cannot build or boot it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.xenhost import host as xenhost


@pytest.fixture(scope="session")
def xen_host() -> Iterator[xenhost.XenHost]:
    try:
        h = xenhost.acquire()
    except (xenhost.XenHostError, OSError) as e:
        pytest.fail(str(e))
    try:
        yield h
    finally:
        xenhost.release()
