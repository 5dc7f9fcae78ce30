"""`pyxapi` command: serve the API, manage local accounts. The explicit wiring lives here."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import logging
import os
import resource
import secrets
import shutil
import signal
import sys
from pathlib import Path

from aiohttp import web

from pyxapi.api.app import make_app
from pyxapi.api.dispatch import Dispatcher, build_methods
from pyxapi.auth import ROOT_USER, AccountFile
from pyxapi.context import Config, Context
from pyxapi.db.sqlite import SqliteLog
from pyxapi.db.store import Store
from pyxapi.drivers.hypervisor.base import HypervisorDriver
from pyxapi.drivers.network import DRIVER_KINDS, create_driver
from pyxapi.engine.events import EventService
from pyxapi.engine.sessions import Sessions
from pyxapi.engine.tasks import TaskRunner
from pyxapi.hostinfo import read_host_facts
from pyxapi.model.schema import ROLE_ORDER, load_model
from pyxapi.ops import custom_handlers
from pyxapi.ops.bootstrap import bootstrap
from pyxapi.ops.implicit import implicit_handler
from pyxapi.ops.network_runtime import NetworkRuntime
from pyxapi.ops.storage_runtime import StorageRuntime
from pyxapi.ops.vm_monitor import VMMonitor
from pyxapi.security import ensure_tls_certificate, generate_password, ssl_context
from pyxapi.wire.marshal import Marshaller

log = logging.getLogger("pyxapi")
MAINTENANCE_INTERVAL = 60.0


def make_hypervisor(config: Config) -> HypervisorDriver:
    """The configured hypervisor driver; `auto` takes QEMU when it is installed."""
    name = config.hypervisor
    if name == "auto":
        from pyxapi.drivers.hypervisor.xen.host import is_xen_dom0

        name = "xen" if is_xen_dom0() else "qemu" if shutil.which("qemu-system-x86_64") else "sim"
    if name == "sim":
        from pyxapi.drivers.hypervisor.sim import SimHypervisor

        return SimHypervisor()
    if name == "qemu":
        from pyxapi.drivers.hypervisor.qemu import QemuDriver

        return QemuDriver(config.data_dir / "run" / "qemu", netns=config.netns)
    if name == "xen":
        from pyxapi.drivers.hypervisor.xen.driver import XenDriver

        return XenDriver(config.data_dir / "run" / "xen")
    raise SystemExit(f"pyxapi: unknown hypervisor driver {config.hypervisor!r} (sim, qemu, xen, auto)")


def make_network(ctx: Context) -> NetworkRuntime:
    """The configured network driver; `auto` takes the Linux bridge driver."""
    config = ctx.config
    kind = "bridge" if config.network == "auto" else config.network
    if kind not in DRIVER_KINDS:
        raise SystemExit(f"pyxapi: unknown network driver {config.network!r} ({', '.join(DRIVER_KINDS)}, auto)")
    run_dir = config.data_dir / "run" / "net"
    driver = create_driver(kind, netns=config.netns, run_dir=run_dir / "ovs")
    return NetworkRuntime(ctx, driver, run_dir, config.netns)


def build(config: Config) -> tuple[Context, Dispatcher]:
    """Wire the model, store, sessions, tasks and handlers into one context."""
    model = load_model()
    store = Store(model, SqliteLog(config.data_dir / "db" / "state.db", config.durable_fsync))
    store.load()
    marshal = Marshaller(model)
    accounts = AccountFile(config.data_dir / "accounts.json")
    sessions = Sessions(store, accounts, config.max_sessions, config.session_idle_timeout)
    tasks = TaskRunner(store, config.max_finished_tasks, config.finished_task_ttl)
    ctx = Context(config, model, store, marshal, sessions, tasks, accounts)
    ctx.services["events"] = EventService(model, store, marshal, config.event_batch_delay)
    ctx.services["pool_secret"] = _pool_secret(config.data_dir)
    ctx.services["hypervisor"] = make_hypervisor(config)
    facts = read_host_facts()
    if ctx.services["hypervisor"].name == "xen":
        from pyxapi.drivers.hypervisor.xen.wiring import xen_host_facts

        facts = xen_host_facts(ctx.services["hypervisor"], facts, ctx.services)
    bootstrap(ctx, facts)
    ctx.services["network"] = make_network(ctx)
    ctx.services["storage"] = StorageRuntime(ctx)
    sessions.host_ref = tasks.host_ref = ctx.host_ref
    sessions.pool_ref = ctx.pool_ref
    stored = {c.name for c in model.stored_classes()}
    methods = build_methods(
        model.messages(),
        custom_handlers(model),
        lambda m: implicit_handler(m, stored, model.classes[m.cls].fields),
    )
    return ctx, Dispatcher(ctx, methods)


def _pool_secret(data_dir: Path) -> str:
    path = data_dir / "pool_secret"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def ensure_root_account(accounts: AccountFile) -> str | None:
    """Create root on first start; returns the password only when it was generated here."""
    if ROOT_USER in accounts.load():
        return None
    given = os.environ.get("PYXAPI_ROOT_PASSWORD")
    password = given or generate_password()
    accounts.set_password(ROOT_USER, password, "pool-admin")
    return None if given else password


def _raise_fd_limit() -> None:
    """Every waiting event.from client holds a socket: allow as many as the hard limit does."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def serve(config: Config) -> None:
    _raise_fd_limit()
    config.data_dir.mkdir(parents=True, exist_ok=True)
    generated = ensure_root_account(AccountFile(config.data_dir / "accounts.json"))
    ctx, dispatcher = build(config)
    # SRs, bridges, DHCP and re-adopted guests are in place before the first request is accepted.
    await ctx.services["storage"].start()
    await ctx.services["network"].start()
    monitor = VMMonitor(ctx, ctx.services["hypervisor"])
    await monitor.start()
    app = make_app(dispatcher, config.max_request_bytes)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    urls = []
    await web.TCPSite(runner, config.host, config.port).start()
    urls.append(f"http://{config.host}:{config.port}/")
    if config.tls_port:
        host_record = ctx.store.get("host", ctx.host_ref)
        cert, key = ensure_tls_certificate(config.data_dir, host_record["hostname"], [config.host])
        await web.TCPSite(runner, config.host, config.tls_port, ssl_context=ssl_context(cert, key)).start()
        urls.append(f"https://{config.host}:{config.tls_port}/")
    socket_path = config.unix_socket or config.data_dir / "xapi.sock"
    with contextlib.suppress(FileNotFoundError):
        socket_path.unlink()
    await web.UnixSite(runner, str(socket_path)).start()
    os.chmod(socket_path, 0o600)
    print(f"pyxapi: serving the XenAPI on {' and '.join(urls)} (and {socket_path})", flush=True)
    if generated:
        print(f"pyxapi: log in as root with password: {generated}  (shown once; change with `pyxapi passwd root`)")
    else:
        print("pyxapi: log in as root (password from PYXAPI_ROOT_PASSWORD or set with `pyxapi passwd root`)")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    daemon_pid = os.getpid()

    def on_signal(signum: int, frame: object) -> None:
        # Not loop.add_signal_handler: its wakeup fd is inherited by forked helpers (pyroute2's
        # netns workers), and a SIGTERM ending such a helper would then stop the daemon too.
        if os.getpid() == daemon_pid:
            loop.call_soon_threadsafe(stop.set)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    maintenance = asyncio.create_task(_maintenance(ctx))
    try:
        await stop.wait()
    finally:
        maintenance.cancel()
        await monitor.stop()
        await ctx.services["hypervisor"].close()
        await ctx.services["network"].stop()
        await ctx.services["storage"].stop()
        await ctx.tasks.shutdown()
        await runner.cleanup()


async def _maintenance(ctx: Context) -> None:
    while True:
        await asyncio.sleep(MAINTENANCE_INTERVAL)
        try:
            ctx.sessions.expire_idle()
            ctx.tasks.collect()
        except Exception:
            log.exception("maintenance pass failed")


def _read_new_password(user: str) -> str:
    if env := os.environ.get("PYXAPI_PASSWORD"):
        return env
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass(f"New password for {user}: ")
    if getpass.getpass("Again: ") != first:
        raise SystemExit("passwords differ")
    return first


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="pyxapi", description="pyxapi: a XenAPI toolstack")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="serve the XenAPI")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8080)
    s.add_argument("--tls-port", type=int, default=8443, help="HTTPS port (0 disables)")
    s.add_argument("--data-dir", type=Path, default=Path("/var/lib/pyxapi") if os.geteuid() == 0 else Path("var"))
    s.add_argument("--hypervisor", default="auto", help="qemu, xen, sim, or auto (xen in dom0, else qemu)")
    s.add_argument("--network", default="auto", help="bridge, ovs, sim, or auto (bridge)")
    s.add_argument("--netns", help="network namespace for bridges, taps, DHCP and guests (must exist)")
    s.add_argument(
        "--manage-host-nics",
        action="store_true",
        help="without --netns: let PIF operations reconfigure this machine's own NICs (off: read-only)",
    )
    s.add_argument("--unix-socket", type=Path)
    s.add_argument("--log-level", default="INFO")
    p = sub.add_parser("passwd", help="set a local account's password (offline; creates the account)")
    p.add_argument("user")
    p.add_argument("--role", choices=ROLE_ORDER)
    p.add_argument("--data-dir", type=Path, default=Path("/var/lib/pyxapi") if os.geteuid() == 0 else Path("var"))
    args = parser.parse_args(argv)
    if args.command == "passwd":
        AccountFile(args.data_dir / "accounts.json").set_password(args.user, _read_new_password(args.user), args.role)
        print(f"password for {args.user} set")
        return
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = Config(
        data_dir=args.data_dir.resolve(),
        host=args.host,
        port=args.port,
        tls_port=args.tls_port or None,
        unix_socket=args.unix_socket,
        hypervisor=args.hypervisor,
        network=args.network,
        netns=args.netns,
        manage_host_nics=args.manage_host_nics,
    )
    asyncio.run(serve(config))


if __name__ == "__main__":
    main()
