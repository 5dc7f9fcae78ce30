"""Who is at the other end of a socket (SO_PEERCRED), and whom the daemon trusts as the local root."""

from __future__ import annotations

import os
import socket

import pytest

from pyxapi.api.local_peer import is_trusted_uid, peer_uid


def test_peer_uid_of_a_unix_socket_is_the_connecting_process() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        assert peer_uid(a) == os.geteuid() and peer_uid(b) == os.geteuid()


def test_tcp_and_missing_sockets_have_no_peer_uid() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        assert peer_uid(s) is None
    assert peer_uid(None) is None


@pytest.mark.parametrize(
    ("uid", "daemon_uid", "trusted"),
    [(0, 0, True), (0, 1000, True), (1000, 1000, True), (1001, 1000, False), (65534, 0, False), (None, 0, False)],
)
def test_root_and_the_daemons_own_user_are_trusted(uid: int | None, daemon_uid: int, trusted: bool) -> None:
    assert is_trusted_uid(uid, daemon_uid) is trusted
