"""The HTTP application: RPC endpoints (XML-RPC anywhere, JSON-RPC on /jsonrpc and /json).

HTTP handlers for import/export, consoles and RRDs join here as their issues land.
"""

from __future__ import annotations

import logging

from aiohttp import web

from pyxapi.api.dispatch import Dispatcher
from pyxapi.api.handlers import console, vdi_transfer, xva_export, xva_import
from pyxapi.api.local_peer import is_local_superuser
from pyxapi.model.errors import ApiError
from pyxapi.wire import jsonrpc, xmlrpc
from pyxapi.wire.xmlrpc import WireError

log = logging.getLogger(__name__)

JSON_PATHS = ("/jsonrpc", "/json")
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, GET, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type",
}


class RpcEndpoints:
    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher

    async def xmlrpc(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            method, params = xmlrpc.parse_request(body)
        except WireError as e:
            return _bad_request(str(e))
        if method == "system.listMethods":
            # XML-RPC introspection answers bare, not in a Status struct.
            return web.Response(body=xmlrpc.bare(self.dispatcher.list_methods()), content_type="text/xml")
        try:
            value = await self.dispatcher.call(method, params, "xml", _is_local(request))
            payload = xmlrpc.success(value)
        except ApiError as e:
            payload = xmlrpc.failure(e)
        return web.Response(body=payload, content_type="text/xml")

    async def jsonrpc(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            req = jsonrpc.parse_request(body)
        except WireError as e:
            return _bad_request(str(e))
        try:
            value = await self.dispatcher.call(req.method, req.params, "json", _is_local(request))
            payload = jsonrpc.success(req, value)
        except ApiError as e:
            payload = jsonrpc.failure(req, e)
        return web.Response(body=payload, headers={"Content-Type": "application/json", **CORS_HEADERS})

    async def post(self, request: web.Request) -> web.StreamResponse:
        if request.path in JSON_PATHS:
            return await self.jsonrpc(request)
        return await self.xmlrpc(request)


def _is_local(request: web.Request) -> bool:
    """Root (or the daemon's own user) over the Unix socket is trusted as xapi trusts its own."""
    return is_local_superuser(request)


def _bad_request(reason: str) -> web.Response:
    # xapi answers an unparseable RPC with an HTTP 500 and an HTML body, not an API failure.
    text = f"<html><body><h1>HTTP 500 internal server error</h1>{_escape(reason)}</body></html>"
    return web.Response(status=500, text=text, content_type="text/html")


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


async def root_page(request: web.Request) -> web.Response:
    return web.Response(
        text="<html><head><title>pyxapi</title></head><body><h1>pyxapi</h1>"
        "<p>XenAPI over XML-RPC at <code>/</code> and JSON-RPC at <code>/jsonrpc</code>.</p></body></html>",
        content_type="text/html",
    )


async def options(request: web.Request) -> web.Response:
    return web.Response(status=200, headers=CORS_HEADERS)


def make_app(dispatcher: Dispatcher, max_request_bytes: int) -> web.Application:
    # A TunnelingApplication so that `CONNECT /console?…` is caught before aiohttp's parser,
    # which only knows authority-form CONNECT targets (see api/handlers/console.py).
    app = console.TunnelingApplication(client_max_size=max_request_bytes)
    rpc = RpcEndpoints(dispatcher)
    app.router.add_get("/", root_page)
    console.install(app, dispatcher.ctx)
    vdi_transfer.install(app, dispatcher.ctx)
    xva_export.install(app, dispatcher.ctx)
    xva_import.install(app, dispatcher.ctx)
    app.router.add_route("OPTIONS", "/{tail:.*}", options)
    app.router.add_post("/{tail:.*}", rpc.post)
    return app
