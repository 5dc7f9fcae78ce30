"""Whether a request comes from the host's superuser over the daemon's Unix socket.

xapi pre-authenticates callers on its local socket as root: they get sessions without a password
(session.login_with_password for root, session.slave_local_login_with_password for anyone). pyxapi
trusts the same callers, and asks the kernel who they are (SO_PEERCRED) rather than relying on the
socket's file mode alone: root, or the user the daemon runs as (a daemon run unprivileged by a
developer). Anything else, and every TCP connection, authenticates with a password.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import Protocol

from aiohttp import web

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class PeerSocket(Protocol):
    """A socket.socket, or the asyncio transport's TransportSocket wrapping one."""

    @property
    def family(self) -> int: ...

    def getsockopt(self, level: int, optname: int, buflen: int, /) -> bytes: ...


def peer_uid(sock: PeerSocket | None) -> int | None:
    """The uid of the process at the other end of a connected Unix socket, None if unknown."""
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except OSError:
        return None
    _pid, uid, _gid = _UCRED.unpack(raw)
    return int(uid)


def is_trusted_uid(uid: int | None, daemon_uid: int) -> bool:
    return uid is not None and uid in (0, daemon_uid)


def is_local_superuser(request: web.Request) -> bool:
    transport = request.transport
    if transport is None:
        return False
    return is_trusted_uid(peer_uid(transport.get_extra_info("socket")), os.getuid())
