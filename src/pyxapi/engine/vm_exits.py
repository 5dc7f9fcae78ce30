"""Who settles a VM's record when its domain exits unasked: the monitor at once, or an operation.

An exit nobody requested (the guest powered off, rebooted or crashed; the emulator was killed) is
the monitor's to handle: it applies actions_after_shutdown / _reboot / _crash. The one exception is
an exit during an operation that moves the VM between power states itself: that operation's own
code records where the VM ends (Halted, Running in a new domain, Suspended...), and a second writer
would race it. The monitor then waits until no such operation is left and looks again: if the
record still says a domain runs and the domain is gone, it applies the actions after all.

Every other operation (snapshot, clone/copy/export, set_* calls, vCPU/memory changes, sysrq and the
power button) leaves the power state to others, so an exit during one is handled at once: a guest
that powers itself off during a VM.snapshot ends Halted with its devices released.
"""

from __future__ import annotations

from collections.abc import Iterable

# Operations (VM.current_operations values) whose code records the VM's power state when they end.
POWER_CHANGING = frozenset(
    {
        "start",
        "start_on",
        "shutdown",
        "clean_shutdown",
        "hard_shutdown",
        "clean_reboot",
        "hard_reboot",
        "pause",
        "unpause",
        "suspend",
        "resume",
        "resume_on",
        # Pauses the domain while it saves the memory image, continues it, and reports a guest that
        # could not be continued (VM_CHECKPOINT_RESUME_FAILED): it drives the domain's run state.
        "checkpoint",
        "pool_migrate",
        "migrate_send",
        "power_state_reset",
        # VM.revert hard-shuts the VM down and gives it the snapshot's power state (Suspended for a
        # checkpoint); "revert" itself marks the snapshot, "reverting" the VM reverted.
        "revert",
        "reverting",
        # xapi's sysprep runs in the guest and waits for the guest to shut itself down.
        "sysprep",
    }
)


def settled_by_operation(current_operations: Iterable[str]) -> bool:
    """True while one of the operations running on the VM records its power state itself."""
    return any(op in POWER_CHANGING for op in current_operations)
