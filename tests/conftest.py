from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import XenAPI

from tests.server_harness import ROOT_PASSWORD, Daemon, new_daemon


@pytest.fixture(scope="session")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = new_daemon(tmp_path_factory.mktemp("pyxapi"))
    d.start()
    yield d
    d.stop()


@pytest.fixture
def xapi(daemon: Daemon) -> Iterator[XenAPI.Session]:
    session = XenAPI.Session(daemon.url)
    session.xenapi.login_with_password("root", ROOT_PASSWORD, "1.0", "pyxapi-tests")
    yield session
    with contextlib.suppress(Exception):
        session.xenapi.session.logout()
