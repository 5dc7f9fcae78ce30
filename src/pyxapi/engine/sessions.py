"""Sessions: login, validation on every call, idle expiry and the per-user cap.

Session records live in the store (a non-persistent class, so a restart ends them as in xapi);
the hot-path lookup is a dict of SessionInfo, and `last_active` is written back lazily so a busy
client does not turn every call into a session `mod` event.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from pyxapi.auth import ROOT_USER, AccountFile
from pyxapi.db.store import NULL_REF, Store
from pyxapi.model.errors import SESSION_INVALID, ApiError
from pyxapi.model.schema import ROLE_ORDER
from pyxapi.wire.marshal import now_datetime

LAST_ACTIVE_WRITE_INTERVAL = 60.0


@dataclass(slots=True)
class SessionInfo:
    ref: str
    user: str
    is_root: bool
    roles: frozenset[str]
    originator: str
    local: bool
    created: float
    last_active: float
    last_written: float

    def may(self, allowed: tuple[str, ...] | None) -> bool:
        """RBAC: the local superuser may do anything; others need one of the allowed roles."""
        if self.is_root:
            return True
        if allowed is None:
            return True
        return bool(self.roles.intersection(allowed))


def roles_at_or_below(role: str) -> frozenset[str]:
    """A role includes every less privileged role (pool-admin ⊇ pool-operator ⊇ …)."""
    if role not in ROLE_ORDER:
        return frozenset({role})
    return frozenset(ROLE_ORDER[ROLE_ORDER.index(role) :])


class Sessions:
    def __init__(
        self, store: Store, accounts: AccountFile, max_sessions: int = 400, idle_timeout: float = 86400.0
    ) -> None:
        self.store = store
        self.accounts = accounts
        self.max_sessions = max_sessions
        self.idle_timeout = idle_timeout
        self.host_ref = NULL_REF
        self.pool_ref = NULL_REF
        self._info: dict[str, SessionInfo] = {}

    def login(self, user: str, password: str, originator: str = "", local: bool = False) -> str:
        account = self.accounts.check(user, password)
        if account is None:
            raise ApiError("SESSION_AUTHENTICATION_FAILED")
        return self.open(account.name, account.role, originator, local)

    def open(self, user: str, role: str, originator: str = "", local: bool = False) -> str:
        """Create a session for an already authenticated user."""
        is_root = user == ROOT_USER
        roles = roles_at_or_below(role)
        self._enforce_cap()
        now = time.time()
        ref = self.store.create(
            "session",
            {
                "this_host": self.host_ref,
                "last_active": now_datetime(),
                "validation_time": now_datetime(),
                "pool": False,
                "is_local_superuser": is_root,
                "auth_user_name": user,
                "auth_user_sid": "" if is_root else f"pyxapi-local:{user}",
                "originator": originator,
                "rbac_permissions": [],
            },
        )
        self._info[ref] = SessionInfo(ref, user, is_root, roles, originator, local, now, now, now)
        return ref

    def validate(self, ref: object) -> SessionInfo:
        info = self._info.get(ref) if isinstance(ref, str) else None
        if info is None:
            raise ApiError(SESSION_INVALID, str(ref))
        now = time.time()
        if now - info.last_active > self.idle_timeout:
            self.logout(info.ref)
            raise ApiError(SESSION_INVALID, info.ref)
        info.last_active = now
        if now - info.last_written > LAST_ACTIVE_WRITE_INTERVAL:
            info.last_written = now
            self.store.set_field("session", info.ref, "last_active", now_datetime())
        return info

    def find(self, ref: str) -> SessionInfo | None:
        return self._info.get(ref)

    def logout(self, ref: str) -> None:
        info = self._info.pop(ref, None)
        if info is None or not self.store.exists("session", ref):
            return
        with self.store.transaction():
            # Tasks belong to the session that made them and go with it, as in xapi.
            for task in list(self.store.get("session", ref).get("tasks", [])):
                if self.store.exists("task", task):
                    self.store.destroy("task", task)
            self.store.destroy("session", ref)

    def count(self) -> int:
        return len(self._info)

    def _enforce_cap(self) -> None:
        excess = len(self._info) - self.max_sessions + 1
        if excess <= 0:
            return
        oldest = sorted(self._info.values(), key=lambda s: s.last_active)[:excess]
        for info in oldest:
            self.logout(info.ref)

    def expire_idle(self) -> int:
        cutoff = time.time() - self.idle_timeout
        stale = [i.ref for i in self._info.values() if i.last_active < cutoff]
        for ref in stale:
            self.logout(ref)
        return len(stale)
