"""The explicit wiring passed down from main: no module-level singletons anywhere."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyxapi.auth import AccountFile
    from pyxapi.db.store import Store
    from pyxapi.engine.sessions import Sessions
    from pyxapi.engine.tasks import TaskRunner
    from pyxapi.model.schema import Model
    from pyxapi.wire.marshal import Marshaller


@dataclass(slots=True)
class Config:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8080
    tls_port: int | None = 8443
    unix_socket: Path | None = None
    hypervisor: str = "sim"
    network: str = "sim"
    netns: str | None = None  # where bridges, taps, DHCP and QEMU live (None: this namespace)
    # Outside a netns, host NICs are the machine's own: PIFs for them stay unmanaged (read-only)
    # and pyxapi refuses to enslave them or change their addresses unless this is set.
    manage_host_nics: bool = False
    max_sessions: int = 400
    session_idle_timeout: float = 24 * 3600.0
    max_finished_tasks: int = 200
    finished_task_ttl: float = 64 * 60.0
    event_batch_delay: float = 0.05
    max_request_bytes: int = 64 * 1024 * 1024
    durable_fsync: bool = False


@dataclass(slots=True)
class Context:
    config: Config
    model: Model
    store: Store
    marshal: Marshaller
    sessions: Sessions
    tasks: TaskRunner
    accounts: AccountFile
    host_ref: str = ""
    pool_ref: str = ""
    services: dict[str, Any] = field(default_factory=dict)
