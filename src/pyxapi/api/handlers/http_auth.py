"""Who is calling an HTTP handler (consoles, disk and VM import/export), read the way xapi reads
it: a `session_id` cookie or query parameter first, then HTTP Basic credentials; and whether the
caller's role may perform the handler's HTTP action (the model's `http_actions` table).

A refused request is a `Refusal`: an HTTP status and a reason, answered before any work starts.
"""

from __future__ import annotations

import asyncio
import base64
import http
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web

from pyxapi.auth import ROOT_USER
from pyxapi.context import Context
from pyxapi.engine.sessions import roles_at_or_below
from pyxapi.model.errors import ApiError

BASIC_CHALLENGE = {"WWW-Authenticate": 'Basic realm="xapi"'}
MOST_PRIVILEGED = ("pool-admin",)


class Refusal(Exception):
    """An HTTP error answer; raised before anything is relayed."""

    def __init__(self, status: int, reason: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason
        self.headers = dict(headers or {})

    def raw(self) -> bytes:
        body = f"{self.reason}\n".encode()
        lines = [
            f"HTTP/1.1 {self.status} {http.HTTPStatus(self.status).phrase}",
            "Connection: close",
            "Content-Type: text/plain; charset=utf-8",
            f"Content-Length: {len(body)}",
        ]
        lines += [f"{k}: {v}" for k, v in self.headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    def response(self) -> web.Response:
        return web.Response(status=self.status, text=self.reason, headers=self.headers)


@dataclass(frozen=True, slots=True)
class Credentials:
    query: Mapping[str, str]
    cookies: Mapping[str, str]
    authorization: str | None


@dataclass(frozen=True, slots=True)
class Caller:
    user: str
    is_root: bool
    roles: frozenset[str]
    by_cookie: bool  # the session came from a cookie, which browsers send cross-site
    session: str | None  # the session's ref, None for Basic credentials

    def may(self, allowed: tuple[str, ...]) -> bool:
        return self.is_root or bool(self.roles.intersection(allowed))


def parse_cookies(header: str) -> dict[str, str]:
    cookies: dict[str, str] = {}
    for item in header.split(";"):
        name, sep, value = item.strip().partition("=")
        if sep and name:
            cookies.setdefault(name, value.strip().strip('"'))
    return cookies


def basic_credentials(header: str) -> tuple[str, str]:
    scheme, _, param = header.strip().partition(" ")
    if scheme.lower() != "basic":
        raise Refusal(401, f"unsupported authorization scheme {scheme!r}", BASIC_CHALLENGE)
    try:
        decoded = base64.b64decode(param.strip(), validate=True).decode("utf-8")
    except ValueError:  # binascii.Error and UnicodeDecodeError are both ValueErrors
        raise Refusal(401, "malformed Basic credentials", BASIC_CHALLENGE) from None
    user, _, password = decoded.partition(":")
    return user, password


def action_roles(ctx: Context, name: str) -> tuple[str, ...]:
    for action in ctx.model.http_actions:
        if action["name"] == name:
            return tuple(action["roles"])
    return MOST_PRIVILEGED  # unknown to the model: only the most privileged role


def request_credentials(request: web.Request) -> Credentials:
    return Credentials(request.query, request.cookies, request.headers.get("Authorization"))


async def authorize(ctx: Context, creds: Credentials, allowed: tuple[str, ...], what: str) -> Caller:
    """The caller behind `creds`, who must hold one of the `allowed` roles (root always may)."""
    by_cookie = bool(creds.cookies.get("session_id"))
    session = creds.cookies.get("session_id") or creds.query.get("session_id")
    if session:
        try:
            info = ctx.sessions.validate(session)
        except ApiError:
            raise Refusal(401, "the session is not valid", BASIC_CHALLENGE) from None
        caller = Caller(info.user, info.is_root, info.roles, by_cookie, session)
    elif creds.authorization:
        user, password = basic_credentials(creds.authorization)
        # scrypt takes tens of milliseconds: keep it off the event loop
        account = await asyncio.to_thread(ctx.accounts.check, user, password)
        if account is None:
            raise Refusal(401, "wrong user name or password", BASIC_CHALLENGE)
        caller = Caller(account.name, account.name == ROOT_USER, roles_at_or_below(account.role), False, None)
    else:
        raise Refusal(401, "a session_id or Basic credentials are required", BASIC_CHALLENGE)
    if not caller.may(allowed):
        raise Refusal(403, f"{caller.user} may not {what}")
    return caller
