"""Local user accounts: password hashes and roles, kept in a 0600 file in the data dir.

xapi authenticates root through PAM and everyone else through an external directory; pyxapi
keeps its own small account file instead, so a stock machine needs nothing else. Passwords are
stored only as scrypt hashes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from pyxapi.security import hash_password, verify_password

ROOT_USER = "root"


@dataclass(frozen=True, slots=True)
class Account:
    name: str
    password_hash: str
    role: str  # pool-admin for root; any model role for others


class AccountFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, Account]:
        if not self.path.exists():
            return {}
        raw = json.loads(self.path.read_text())
        return {name: Account(name, a["password_hash"], a.get("role", "read-only")) for name, a in raw.items()}

    def save(self, accounts: dict[str, Account]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({a.name: {"password_hash": a.password_hash, "role": a.role} for a in accounts.values()}, f)
        os.replace(tmp, self.path)

    def set_password(self, name: str, password: str, role: str | None = None) -> None:
        accounts = self.load()
        old = accounts.get(name)
        new_role = role or (old.role if old else ("pool-admin" if name == ROOT_USER else "read-only"))
        accounts[name] = Account(name, hash_password(password), new_role)
        self.save(accounts)

    def check(self, name: str, password: str) -> Account | None:
        account = self.load().get(name)
        if account is None or not verify_password(password, account.password_hash):
            return None
        return account
