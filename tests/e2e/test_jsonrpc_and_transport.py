"""Raw JSON-RPC 1.0/2.0, HTTPS, keep-alive and malformed requests against a running daemon."""

from __future__ import annotations

import http.client
import json
import ssl
import xmlrpc.client

import XenAPI

from tests.server_harness import ROOT_PASSWORD, Daemon


def jsonrpc(daemon: Daemon, payload: dict, path: str = "/jsonrpc") -> tuple[int, str, dict]:  # type: ignore[type-arg]
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=30)
    conn.request("POST", path, json.dumps(payload), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, resp.getheader("Content-Type") or "", json.loads(body)


def test_jsonrpc_v1(daemon: Daemon) -> None:
    status, ctype, reply = jsonrpc(
        daemon, {"method": "session.login_with_password", "params": ["root", ROOT_PASSWORD], "id": 1}
    )
    assert status == 200 and ctype == "application/json"
    assert reply["error"] is None and reply["id"] == 1
    session = reply["result"]
    assert session.startswith("OpaqueRef:")
    _, _, reply = jsonrpc(daemon, {"method": "host.get_all_records", "params": [session], "id": "x"})
    host = next(iter(reply["result"].values()))
    assert host["API_version_major"] == 2  # ints are JSON numbers on this wire
    assert isinstance(host["enabled"], bool)
    _, _, reply = jsonrpc(daemon, {"method": "VM.get_record", "params": [session, "OpaqueRef:bad"], "id": 2})
    assert reply == {"result": None, "error": ["HANDLE_INVALID", "VM", "OpaqueRef:bad"], "id": 2}
    _, _, reply = jsonrpc(daemon, {"method": "session.logout", "params": [session], "id": 3}, path="/json")
    assert reply["result"] == "" and reply["error"] is None


def test_jsonrpc_v2(daemon: Daemon) -> None:
    _, ctype, reply = jsonrpc(
        daemon,
        {
            "jsonrpc": "2.0",
            "method": "session.login_with_password",
            "params": ["root", ROOT_PASSWORD, "2.23", "t"],
            "id": 7,
        },
    )
    assert ctype == "application/json"
    assert set(reply) == {"jsonrpc", "result", "id"}  # no `error` member on success
    session = reply["result"]
    _, _, reply = jsonrpc(daemon, {"jsonrpc": "2.0", "method": "VM.get_by_uuid", "params": [session, "nope"], "id": 8})
    assert reply == {"jsonrpc": "2.0", "error": {"code": 1, "message": "UUID_INVALID", "data": ["VM", "nope"]}, "id": 8}
    _, _, reply = jsonrpc(daemon, {"jsonrpc": "2.0", "method": "VM.no_such", "params": [session], "id": 9})
    assert reply["error"]["message"] == "MESSAGE_METHOD_UNKNOWN"
    vm = jsonrpc(
        daemon,
        {"jsonrpc": "2.0", "method": "VM.create", "params": [session, {"name_label": "j", "VCPUs_max": 3}], "id": 10},
    )[2]["result"]
    rec = jsonrpc(daemon, {"jsonrpc": "2.0", "method": "VM.get_record", "params": [session, vm], "id": 11})[2]["result"]
    assert rec["VCPUs_max"] == 3 and rec["name_label"] == "j"
    # event.from through JSON: valid_ref_counts are numbers, the token a string
    got = jsonrpc(daemon, {"jsonrpc": "2.0", "method": "event.from", "params": [session, ["vm"], "", 0.0], "id": 12})[2]
    assert isinstance(got["result"]["valid_ref_counts"]["vm"], int) and isinstance(got["result"]["token"], str)


def test_malformed_requests_get_http_errors(daemon: Daemon) -> None:
    for path, body in [("/", b"<methodCall><nope"), ("/jsonrpc", b"{not json"), ("/jsonrpc", b'{"method": "x"}')]:
        conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=30)
        conn.request("POST", path, body)
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 500, (path, body)
        conn.close()
    # the daemon is still fine afterwards
    after = XenAPI.Session(daemon.url)
    after.xenapi.login_with_password("root", ROOT_PASSWORD)
    assert after.xenapi.pool.get_all()


def test_oversized_body_is_refused(daemon: Daemon) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=60)
    conn.request("POST", "/", b"x" * (65 * 1024 * 1024))
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 413


def test_xmlrpc_paths_list_methods_and_keepalive(daemon: Daemon) -> None:
    for path in ("", "RPC2", "xmlrpc"):
        proxy = xmlrpc.client.ServerProxy(daemon.url + path, allow_none=True)
        methods = proxy.system.listMethods()
        assert "VM.start" in methods and "Async.VM.start" in methods and "session.login_with_password" in methods
    # One connection, many calls (HTTP/1.1 keep-alive).
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=30)
    body = xmlrpc.client.dumps(("root", ROOT_PASSWORD), "session.login_with_password").encode()
    for _ in range(5):
        conn.request("POST", "/", body, {"Content-Type": "text/xml"})
        resp = conn.getresponse()
        assert resp.status == 200 and b"Success" in resp.read()
    conn.close()


def test_xmlrpc_int64_as_strings_and_datetime(daemon: Daemon) -> None:
    proxy = xmlrpc.client.ServerProxy(daemon.url, allow_none=True)
    session = proxy.session.login_with_password("root", ROOT_PASSWORD)["Value"]
    host = proxy.host.get_all(session)["Value"][0]
    metrics = proxy.host.get_metrics(session, host)["Value"]
    total = proxy.host_metrics.get_memory_total(session, metrics)["Value"]
    assert isinstance(total, str) and int(total) > 2**31  # int64 travels as a decimal string
    when = proxy.host.get_servertime(session, host)["Value"]
    assert isinstance(when, xmlrpc.client.DateTime)
    # <i4> accepted for an int parameter
    vm = proxy.VM.create(session, {"name_label": "i4", "VCPUs_max": 2})["Value"]
    assert proxy.VM.get_VCPUs_max(session, vm)["Value"] == "2"


def test_https_with_the_sdk(daemon: Daemon) -> None:
    s = XenAPI.Session(daemon.tls_url, ignore_ssl=True)
    s.xenapi.login_with_password("root", ROOT_PASSWORD)
    assert s.xenapi.pool.get_all()
    s.xenapi.session.logout()
    cert = (daemon.data_dir / "tls" / "server.pem").read_text()
    ctx = ssl.create_default_context(cadata=cert)
    ctx.check_hostname = False
    conn = http.client.HTTPSConnection("127.0.0.1", daemon.tls_port, context=ctx, timeout=30)
    conn.request("GET", "/")
    assert conn.getresponse().status == 200


def test_local_unix_socket_trusts_root(daemon: Daemon) -> None:
    """XenAPI.xapi_local() style: HTTP over the Unix socket, root without a password."""
    import socket

    class UnixConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.connect(str(daemon.data_dir / "xapi.sock"))

    def call(method: str, *params: object) -> dict:  # type: ignore[type-arg]
        conn = UnixConnection("localhost", timeout=30)
        conn.request("POST", "/", xmlrpc.client.dumps(params, method).encode(), {"Content-Type": "text/xml"})
        reply = xmlrpc.client.loads(conn.getresponse().read())[0][0]
        conn.close()
        return reply  # type: ignore[no-any-return]

    login = call("session.login_with_password", "root", "")
    assert login["Status"] == "Success"
    assert call("pool.get_all", login["Value"])["Status"] == "Success"
    # other users still need their password, even locally
    assert call("session.login_with_password", "reader", "")["ErrorDescription"] == ["SESSION_AUTHENTICATION_FAILED"]
    # and over TCP root needs it too
    tcp = xmlrpc.client.ServerProxy(daemon.url).session.login_with_password("root", "")
    assert tcp["ErrorDescription"] == ["SESSION_AUTHENTICATION_FAILED"]
