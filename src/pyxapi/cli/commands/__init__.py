"""xe's explicit commands, one module per area; each module's COMMANDS maps the command name
to its handler (whose docstring is the command's help text). Imported only when an explicit
command runs, so that the generated `<class>-list` commands start faster."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from pyxapi.cli.ctx import Ctx

    Handler = Callable[[Ctx], None]

_registry: dict[str, Handler] = {}


def registry() -> dict[str, Handler]:
    if not _registry:
        from pyxapi.cli.commands import (
            host,
            misc,
            network,
            pool,
            simple,
            simple_hosts,
            storage,
            transfer,
            vm,
            vm_devices,
            vm_memory,
            vm_snapshot,
        )

        for module in (
            simple,
            simple_hosts,
            vm,
            vm_devices,
            vm_memory,
            vm_snapshot,
            storage,
            network,
            host,
            pool,
            transfer,
            misc,
        ):
            _registry.update(module.COMMANDS)
    return _registry
