"""host.* messages that need no hypervisor (the rest arrive with the VM and pool issues)."""

from __future__ import annotations

import time

from pyxapi.api.dispatch import Call, Handler
from pyxapi.wire.marshal import now_datetime


def get_servertime(call: Call, host: str) -> str:
    return now_datetime()


def get_server_localtime(call: Call, host: str) -> str:
    return time.strftime("%Y%m%dT%H:%M:%S", time.localtime())


MESSAGES: dict[str, Handler] = {
    "get_servertime": get_servertime,
    "get_server_localtime": get_server_localtime,
}
