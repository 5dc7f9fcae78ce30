"""Local files a command reads (certificates, answer files), refused the way xe refuses them."""

from __future__ import annotations

import sys

from pyxapi.cli.errors import XeExit

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pyxapi.cli.ctx import Ctx


def read_file(c: Ctx, key: str) -> str:
    """The text of the file named by parameter `key`."""
    name = c.req(key)
    try:
        with open(name) as f:
            return f.read()
    except OSError as e:
        sys.stderr.write(f"Operation failed. Error: {name}: {e.strerror}\n")
        raise XeExit(1) from None
