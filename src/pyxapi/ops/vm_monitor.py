"""What happens to VMs by themselves: guest exits, daemon restarts, guest-agent reports.

* Every domain exit the driver reports that no client asked for (guest poweroff or reboot,
  crash, the emulator killed) is handled within the driver's notice time by applying
  actions_after_shutdown / actions_after_reboot / actions_after_crash; during an operation that
  changes the power state itself (engine.vm_exits) only once that operation is over, and only if
  the domain is still gone then.
* On start, running domains are re-adopted and the DB is reconciled with them.
* While a VM runs, its guest agent is polled into VM_guest_metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from pyxapi.context import Context
from pyxapi.drivers.hypervisor import base as hv
from pyxapi.engine.vm_exits import settled_by_operation
from pyxapi.model.errors import ApiError
from pyxapi.ops import vm_state
from pyxapi.ops.vm import boot, release_devices

log = logging.getLogger(__name__)

RESTART_ACTIONS = frozenset({"restart", "coredump_and_restart", "rename_restart"})
GUEST_POLL_SECONDS = 2.0
DEFERRED_POLL_SECONDS = 0.2  # how often a deferred exit looks whether the operation is over
LIVE_STATES = ("Running", "Paused")


class VMMonitor:
    def __init__(self, ctx: Context, driver: hv.HypervisorDriver) -> None:
        self.ctx = ctx
        self.driver = driver
        self._tasks: list[asyncio.Task[None]] = []
        self._deferred: set[asyncio.Task[None]] = set()

    def _vm_by_uuid(self, uuid: str) -> str | None:
        try:
            return self.ctx.store.by_uuid("VM", uuid)
        except ApiError:
            return None

    async def start(self) -> None:
        """Subscribe before reconciling, so no exit between the two is missed."""
        stream = self.driver.subscribe()
        await self.reconcile()
        self._tasks.append(asyncio.create_task(self._watch(stream), name="vm-monitor"))
        self._tasks.append(asyncio.create_task(self._poll_guests(), name="guest-metrics"))

    async def stop(self) -> None:
        tasks = [*self._tasks, *self._deferred]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def reconcile(self) -> None:
        store = self.ctx.store
        live = {d.uuid: d for d in await self.driver.adopt()}
        for vm, rec in store.items("VM"):
            if rec["is_control_domain"]:
                continue
            domain = live.get(rec["uuid"])
            if domain is not None:
                vm_state.record_running(self.ctx, vm, domain)
            elif rec["power_state"] in ("Running", "Paused") and rec["resident_on"] == self.ctx.host_ref:
                log.info("VM %s is no longer running: marking it Halted", rec["uuid"])
                vm_state.record_halted(self.ctx, vm)
                await release_devices(self.ctx, vm)
        for uuid in set(live) - {rec["uuid"] for _, rec in store.items("VM")}:
            log.warning("domain %s belongs to no VM; leaving it alone", uuid)

    async def _watch(self, stream: hv.EventStream[hv.DomainEvent]) -> None:
        async for event in stream:
            try:
                await self.handle_exit(event)
            except Exception:
                log.exception("handling the exit of domain %s failed", event.uuid)

    async def handle_exit(self, event: hv.DomainEvent) -> None:
        if event.requested or event.reason == hv.ExitReason.SUSPENDED:
            return  # the operation that caused it records the outcome
        vm = self._vm_by_uuid(event.uuid)
        if vm is None:
            return
        if self._operation_settles(vm):
            task = asyncio.create_task(self._after_operations(vm, event), name=f"vm-exit-{event.uuid}")
            self._deferred.add(task)
            task.add_done_callback(self._deferred.discard)
            return
        await self._apply_actions(vm, event)

    async def _after_operations(self, vm: str, event: hv.DomainEvent) -> None:
        """The exit came while an operation that records the power state itself ran: once none
        is left, apply the actions if the record still claims a domain the driver no longer has."""
        try:
            while True:
                await asyncio.sleep(DEFERRED_POLL_SECONDS)
                if not self._claims_a_domain(vm):
                    return  # the operation settled it (halted, suspended, or the VM is gone)
                if self._operation_settles(vm):
                    continue
                if await self._domain_exists(event.uuid):
                    return  # the operation started a new domain (a reboot, a resume)
                # Another operation may have started while the driver answered: if so, wait for it.
                if self._claims_a_domain(vm) and not self._operation_settles(vm):
                    break
            await self._apply_actions(vm, event)
        except Exception:
            log.exception("handling the deferred exit of domain %s failed", event.uuid)

    def _operation_settles(self, vm: str) -> bool:
        rec = self.ctx.store.find("VM", vm)
        return rec is not None and settled_by_operation(rec["current_operations"].values())

    def _claims_a_domain(self, vm: str) -> bool:
        rec = self.ctx.store.find("VM", vm)
        return rec is not None and rec["power_state"] in LIVE_STATES and rec["resident_on"] == self.ctx.host_ref

    async def _domain_exists(self, uuid: str) -> bool:
        try:
            await self.driver.state(uuid)
        except hv.DomainNotFound:
            return False
        except hv.HypervisorError as e:
            log.warning("domain %s: cannot tell whether it still runs (%s); leaving it alone", uuid, e)
            return True
        return True

    async def _apply_actions(self, vm: str, event: hv.DomainEvent) -> None:
        rec = self.ctx.store.get("VM", vm)
        match event.reason:
            case hv.ExitReason.POWEROFF:
                action = rec["actions_after_shutdown"]
            case hv.ExitReason.REBOOT:
                action = rec["actions_after_reboot"]
            case _:
                action = rec["actions_after_crash"]
        log.info("VM %s exited (%s): %s", rec["uuid"], event.reason, action)
        vm_state.record_halted(self.ctx, vm)
        await release_devices(self.ctx, vm)
        if action in RESTART_ACTIONS:
            try:
                await boot(self.ctx, vm, paused=False)
            except ApiError as e:
                log.warning("could not restart VM %s: %s", rec["uuid"], e.description)

    async def _poll_guests(self) -> None:
        while True:
            await asyncio.sleep(GUEST_POLL_SECONDS)
            running = [
                (vm, rec["uuid"])
                for vm, rec in self.ctx.store.items("VM")
                if rec["power_state"] == "Running" and not rec["is_control_domain"]
            ]
            # Concurrently: one silent agent (a guest still booting) must not delay the others.
            await asyncio.gather(*(self.refresh_guest(vm, uuid) for vm, uuid in running), return_exceptions=True)

    async def refresh_guest(self, vm: str, uuid: str) -> bool:
        try:
            info = await self.driver.guest_agent(uuid, timeout=3.0)
        except hv.HypervisorError:
            return False
        if not self.ctx.store.exists("VM", vm):
            return False
        store = self.ctx.store
        # xapi keys guest addresses by VIF device number: match the guest's NICs by MAC.
        device_of = {
            store.get("VIF", v)["MAC"].lower(): store.get("VIF", v)["device"] for v in store.get("VM", vm)["VIFs"]
        }
        networks: dict[str, str] = {}
        for iface in info.interfaces:
            if iface.name == "lo" or iface.mac.lower() not in device_of:
                continue
            index = device_of[iface.mac.lower()]
            for i, addr in enumerate(iface.ipv4):
                networks[f"{index}/ip" if i == 0 else f"{index}/ipv4/{i}"] = addr
                if i == 0:
                    networks[f"{index}/ipv4/0"] = addr
            for i, addr in enumerate(iface.ipv6):
                networks[f"{index}/ipv6/{i}"] = addr
        os_version = {k: v for k, v in info.os.items() if v}
        if "pretty-name" in info.os:
            os_version["name"] = info.os["pretty-name"]
        if "kernel-release" in info.os:
            os_version["uname"] = info.os["kernel-release"]
        vm_state.record_guest_info(
            self.ctx,
            vm,
            {
                "networks": networks,
                "os_version": os_version,
                "PV_drivers_detected": True,
                "PV_drivers_up_to_date": True,
                "PV_drivers_version": {"major": "1", "minor": "0", "micro": "0"},
                "other": {"feature-shutdown": "1", "has-vendor-device": "0"},
            },
        )
        return True
