"""Client for qemu-guest-agent over the domain's virtio-serial chardev socket.

Each call opens a fresh connection and starts with guest-sync: the channel is a byte pipe with no
framing, so a reply left over from an earlier (timed-out) call must be skipped, and a random sync
id tells the fresh reply apart from stale ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from pathlib import Path
from typing import Any

from pyxapi.drivers.hypervisor.base import GuestAgentUnavailable, HypervisorError


class GuestAgentCommandError(HypervisorError):
    def __init__(self, command: str, error_class: str, desc: str) -> None:
        self.command = command
        self.error_class = error_class
        super().__init__(f"guest agent {command}: {error_class}: {desc}")


async def _read_reply(reader: asyncio.StreamReader, want_sync: int | None) -> dict[str, Any]:
    while True:
        line = await reader.readline()
        if not line:
            raise EOFError("guest agent channel closed")
        try:
            msg = json.loads(line.strip(b"\xff").decode("utf-8", "replace"))
        except ValueError:
            continue  # garbage from an interrupted earlier exchange
        if not isinstance(msg, dict):
            continue
        if want_sync is None or msg.get("return") == want_sync:
            return msg


async def qga_call(socket_path: Path, uuid: str, command: str, arguments: dict[str, Any] | None = None, *,
                   timeout: float = 10.0, expect_reply: bool = True) -> Any:
    """Run one agent command; GuestAgentUnavailable when the agent does not answer in time."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(str(socket_path), limit=16 << 20)
            sync_id = random.randrange(1, 1 << 31)
            # 0xFF resets the agent's JSON parser in case a previous writer left half a command.
            writer.write(b"\xff" + json.dumps({"execute": "guest-sync", "arguments": {"id": sync_id}}).encode() + b"\n")
            await writer.drain()
            await _read_reply(reader, sync_id)
            msg: dict[str, Any] = {"execute": command}
            if arguments:
                msg["arguments"] = arguments
            writer.write(json.dumps(msg).encode() + b"\n")
            await writer.drain()
            if not expect_reply:
                return None
            reply = await _read_reply(reader, None)
    except (TimeoutError, OSError, EOFError) as e:
        raise GuestAgentUnavailable(uuid, f"{command}: {type(e).__name__}: {e}") from e
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
    if "error" in reply:
        err = reply["error"]
        raise GuestAgentCommandError(command, str(err.get("class", "")), str(err.get("desc", "")))
    return reply.get("return")
