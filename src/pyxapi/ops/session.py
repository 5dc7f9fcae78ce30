"""session.*: logins, logouts and password changes."""

from __future__ import annotations

import hmac

from pyxapi.api.dispatch import Call, Handler
from pyxapi.auth import ROOT_USER
from pyxapi.model.errors import NOT_IMPLEMENTED, ApiError


def login_with_password(call: Call, uname: str, pwd: str, version: str, originator: str) -> str:
    if call.local and uname == ROOT_USER:
        # xapi_local(): root on the host itself needs no password over the local socket.
        return call.ctx.sessions.open(ROOT_USER, "pool-admin", originator)
    return call.ctx.sessions.login(uname, pwd, originator)


def slave_local_login_with_password(call: Call, uname: str, pwd: str) -> str:
    if call.local:
        # xapi: a caller pre-authenticated as root on the local socket is not asked for a password,
        # whatever name it gives; the session is the local superuser's.
        return call.ctx.sessions.open(ROOT_USER, "pool-admin", local=True)
    return call.ctx.sessions.login(uname, pwd, local=True)


def _check_pool_secret(call: Call, psecret: str) -> None:
    secret = str(call.ctx.services.get("pool_secret", ""))
    if not secret or not hmac.compare_digest(secret.encode(), psecret.encode()):
        raise ApiError("SESSION_AUTHENTICATION_FAILED")


def slave_login(call: Call, host: str, psecret: str) -> str:
    _check_pool_secret(call, psecret)
    return call.ctx.sessions.open(ROOT_USER, "pool-admin", "pool")


def slave_local_login(call: Call, psecret: str) -> str:
    _check_pool_secret(call, psecret)
    return call.ctx.sessions.open(ROOT_USER, "pool-admin", "pool", local=True)


def logout(call: Call) -> None:
    call.ctx.services["events"].registrations.pop(call.session_ref, None)
    call.ctx.sessions.logout(call.session_ref)


def change_password(call: Call, old_pwd: str, new_pwd: str) -> None:
    session = call.session
    assert session is not None
    accounts = call.ctx.accounts
    if accounts.check(session.user, old_pwd) is None:
        raise ApiError("SESSION_AUTHENTICATION_FAILED")
    if len(new_pwd) < 1:
        raise ApiError("CHANGE_PASSWORD_REJECTED", "the new password is empty")
    accounts.set_password(session.user, new_pwd)


def get_all_subject_identifiers(call: Call) -> list[str]:
    store = call.ctx.store
    sids = {rec["auth_user_sid"] for _, rec in store.items("session") if rec.get("auth_user_sid")}
    return sorted(sids)


def logout_subject_identifier(call: Call, subject_identifier: str) -> None:
    store, sessions = call.ctx.store, call.ctx.sessions
    for ref, rec in store.items("session"):
        if rec.get("auth_user_sid") == subject_identifier and ref != call.session_ref:
            sessions.logout(ref)


def create_from_db_file(call: Call, filename: str) -> str:
    raise ApiError(NOT_IMPLEMENTED, "session.create_from_db_file")


MESSAGES: dict[str, Handler] = {
    "login_with_password": login_with_password,
    "slave_local_login_with_password": slave_local_login_with_password,
    "slave_login": slave_login,
    "slave_local_login": slave_local_login,
    "logout": logout,
    "local_logout": logout,
    "change_password": change_password,
    "get_all_subject_identifiers": get_all_subject_identifiers,
    "logout_subject_identifier": logout_subject_identifier,
    "create_from_db_file": create_from_db_file,
}
