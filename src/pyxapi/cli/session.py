"""Finding the daemon the way xe does, logging in, and calling the API.

With no server named (or 127.0.0.1), xe talks to the host it runs on through the local Unix
socket, where root needs no password; pyxapi's socket is `xapi.sock` in the daemon's data
directory. Otherwise HTTPS on port 443 (HTTP on 80 with --nossl, and always plain on
127.0.0.1), or the port given with -p.
"""

from __future__ import annotations

import os

from pyxapi.cli.argv import ClientOptions
from pyxapi.cli.connection import Endpoint, JsonRpc
from pyxapi.cli.errors import ConnectFailure

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

API_VERSION = "2.23"
# Where a local daemon's socket may be: the root default data dir, `make run`'s ./var, xapi's.
SOCKET_CANDIDATES = ("/var/lib/pyxapi/xapi.sock", "var/xapi.sock", "/var/lib/xcp/xapi")


def local_socket(opts: ClientOptions, environ: dict[str, str] | os._Environ[str] | None = None) -> str | None:
    env = os.environ if environ is None else environ
    explicit = opts.socket or env.get("PYXAPI_SOCKET")
    if explicit:
        return explicit
    if data := env.get("PYXAPI_DATA"):
        return os.path.join(data, "xapi.sock")
    return next((p for p in SOCKET_CANDIDATES if os.path.exists(p)), None)


def endpoints(opts: ClientOptions) -> list[Endpoint]:
    """What to try, in order."""
    local = opts.server == "127.0.0.1"
    found: list[Endpoint] = []
    if local and (path := local_socket(opts)):
        found.append(Endpoint(unix_path=path))
    tls = not opts.nossl and not local
    port = opts.port if opts.port is not None else (443 if tls else 80)
    found.append(Endpoint(host=opts.server, port=port, tls=tls))
    return found


class Api:
    """`api.VM.get_record(ref)`, `api.Async.VM.start(ref, False, False)`: the session goes first."""

    def __init__(self, rpc: JsonRpc, session: str, local: bool = False) -> None:
        self.rpc = rpc
        self.session = session
        self.local = local

    def call(self, method: str, *args: Any) -> Any:
        return self.rpc.call(method, [self.session, *args])

    def __getattr__(self, cls: str) -> _ClassProxy:
        if cls.startswith("__"):
            raise AttributeError(cls)
        return _ClassProxy(self, cls)

    def logout(self) -> None:
        try:  # noqa: SIM105 - contextlib is one more import at start-up
            self.rpc.call("session.local_logout" if self.local else "session.logout", [self.session])
        except Exception:  # a failed logout must not hide the command's result
            pass
        self.rpc.close()


class _ClassProxy:
    def __init__(self, api: Api, prefix: str) -> None:
        self._api = api
        self._prefix = prefix

    def __getattr__(self, name: str) -> Any:
        if self._prefix == "Async":
            return _ClassProxy(self._api, f"Async.{name}")
        method = f"{self._prefix}.{name}"
        return lambda *args: self._api.call(method, *args)


def connect(opts: ClientOptions) -> tuple[JsonRpc, Endpoint]:
    """The first endpoint that accepts a connection."""
    last: Exception | None = None
    for ep in endpoints(opts):
        rpc = JsonRpc(ep)
        try:
            rpc.http._connect()
        except ConnectFailure:
            raise
        except OSError as e:
            last = e
            continue
        return rpc, ep
    raise ConnectFailure("Unable to contact server. Please check server and port settings.") from last


def login(opts: ClientOptions, local_session: bool = False) -> Api:
    """A session: host-local for the emergency commands (as xe's), a normal one otherwise. On the
    local socket the daemon vouches for root either way; over the network the password counts."""
    rpc, _ = connect(opts)
    if local_session:
        ref = rpc.call("session.slave_local_login_with_password", [opts.username, opts.password])
        return Api(rpc, ref, True)
    ref = rpc.call("session.login_with_password", [opts.username, opts.password, API_VERSION, "cli"])
    return Api(rpc, ref, False)
