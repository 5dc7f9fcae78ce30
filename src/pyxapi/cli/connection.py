"""A small HTTP/1.1 client over a Unix socket, TCP or TLS: one kept-alive connection for the
API calls, fresh ones for file transfers. It uses the interpreter's `_socket` directly (the
`socket` module drags in `enum`, a large part of xe's start-up on a busy machine), and
`socket` + `ssl` only for TLS."""

from __future__ import annotations

import _socket

from pyxapi.cli import fastjson
from pyxapi.cli.errors import ApiFailure, ConnectFailure

TYPE_CHECKING = False  # no typing/dataclasses at run time: they would double xe's start-up
if TYPE_CHECKING:
    from _socket import socket as Socket
    from collections.abc import Iterable, Iterator
    from typing import Any

CHUNK = 1 << 20


class Endpoint:
    """Where the daemon is: a Unix socket path, or host:port (with TLS or not)."""

    __slots__ = ("host", "port", "tls", "unix_path")

    def __init__(self, unix_path: str | None = None, host: str = "127.0.0.1", port: int = 80, tls: bool = False):
        self.unix_path = unix_path
        self.host = host
        self.port = port
        self.tls = tls

    def __repr__(self) -> str:
        return f"Endpoint({self.describe()})"

    def describe(self) -> str:
        if self.unix_path:
            return self.unix_path
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def open(self, timeout: float | None = None) -> Socket:
        if self.unix_path:
            sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(self.unix_path)
            except OSError:
                sock.close()
                raise
            return sock
        host = self.host[1:-1] if self.host.startswith("[") and self.host.endswith("]") else self.host
        if self.tls:
            return self._open_tls(host, timeout)
        return _tcp(host, self.port, timeout, self.host)

    def _open_tls(self, host: str, timeout: float | None) -> Socket:
        import socket
        import ssl

        try:
            plain = socket.create_connection((host, self.port), timeout=timeout)
        except socket.gaierror:
            raise ConnectFailure(f"Host '{self.host}' not found.") from None
        plain.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # xe's stunnel does not verify the server: pools use self-signed certificates.
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx.wrap_socket(plain, server_hostname=host)


def _tcp(host: str, port: int, timeout: float | None, shown: str) -> Socket:
    """socket.create_connection, on `_socket`: every address in turn."""
    try:
        infos = _socket.getaddrinfo(host, port, 0, _socket.SOCK_STREAM)
    except _socket.gaierror:
        raise ConnectFailure(f"Host '{shown}' not found.") from None
    error: OSError | None = None
    for family, kind, proto, _, address in infos:
        sock = _socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(address)
        except OSError as e:
            sock.close()
            error = e
            continue
        sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        return sock
    raise error or OSError(f"cannot connect to {shown}:{port}")


class Response:
    """Status, headers, and a body read on demand (Content-Length, chunked, or to close)."""

    def __init__(self, sock: Socket, reader: BufferedReader, method: str) -> None:
        self.sock = sock
        self.reader = reader
        line = reader.readline()
        if not line:
            raise ConnectionError("the server closed the connection")
        parts = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/"):
            raise ConnectionError(f"not an HTTP answer: {line[:80]!r}")
        self.status = int(parts[1])
        self.reason = parts[2] if len(parts) > 2 else ""
        self.headers: dict[str, str] = {}
        while True:
            h = reader.readline()
            if h in (b"\r\n", b"\n", b""):
                break
            k, _, v = h.decode("latin-1").partition(":")
            self.headers[k.strip().lower()] = v.strip()
        self.chunked = self.headers.get("transfer-encoding", "").lower() == "chunked"
        length = self.headers.get("content-length")
        self.remaining: int | None = int(length) if length is not None and not self.chunked else None
        if method == "HEAD" or self.status in (204, 304):
            self.remaining = 0
        self.keep_alive = self.headers.get("connection", "").lower() != "close" and (
            self.remaining is not None or self.chunked
        )

    def iter_body(self, size: int = CHUNK) -> Iterator[bytes]:
        if self.chunked:
            while True:
                n = int(self.reader.readline().split(b";")[0].strip() or b"0", 16)
                if n == 0:
                    while self.reader.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return
                left = n
                while left:
                    data = self.reader.read(min(left, size))
                    if not data:
                        raise ConnectionError("the server closed the connection mid-transfer")
                    left -= len(data)
                    yield data
                self.reader.readline()
        elif self.remaining is not None:
            while self.remaining:
                data = self.reader.read(min(self.remaining, size))
                if not data:
                    raise ConnectionError("the server closed the connection mid-transfer")
                self.remaining -= len(data)
                yield data
        else:
            while data := self.reader.read(size):
                yield data

    def read(self) -> bytes:
        return b"".join(self.iter_body())


class BufferedReader:
    """recv() with a buffer; enough line and block reading for HTTP."""

    def __init__(self, sock: Socket) -> None:
        self.sock = sock
        self.buf = b""

    def _fill(self) -> bool:
        data = self.sock.recv(CHUNK)
        if not data:
            return False
        self.buf += data
        return True

    def readline(self) -> bytes:
        while b"\n" not in self.buf:
            if len(self.buf) > 65536 or not self._fill():
                line, self.buf = self.buf, b""
                return line
        i = self.buf.index(b"\n") + 1
        line, self.buf = self.buf[:i], self.buf[i:]
        return line

    def read(self, n: int) -> bytes:
        if not self.buf and not self._fill():
            return b""
        data, self.buf = self.buf[:n], self.buf[n:]
        return data


class HttpConnection:
    def __init__(self, endpoint: Endpoint, timeout: float | None = None) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.sock: Socket | None = None
        self.reader: BufferedReader | None = None

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock = self.reader = None

    def _connect(self) -> tuple[Socket, BufferedReader]:
        if self.sock is None or self.reader is None:
            self.sock = self.endpoint.open(self.timeout)
            self.reader = BufferedReader(self.sock)
        return self.sock, self.reader

    def request(
        self,
        method: str,
        path: str,
        body: bytes | Iterable[bytes] | None = None,
        headers: dict[str, str] | None = None,
        length: int | None = None,
    ) -> Response:
        """Send a request; an iterable body is streamed (with `length` as Content-Length, or chunked)."""
        fresh = self.sock is None
        try:
            return self._request(method, path, body, headers, length)
        except (ConnectionError, BrokenPipeError) as e:
            # A kept-alive connection the server has since closed: retry once on a fresh one.
            self.close()
            if fresh or not isinstance(body, bytes | None):
                raise ConnectionError(str(e)) from e
            return self._request(method, path, body, headers, length)

    def _request(
        self,
        method: str,
        path: str,
        body: bytes | Iterable[bytes] | None,
        headers: dict[str, str] | None,
        length: int | None,
    ) -> Response:
        sock, reader = self._connect()
        host = "localhost" if self.endpoint.unix_path else self.endpoint.host
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "User-Agent: xe-cli/pyxapi"]
        hdrs = dict(headers or {})
        if isinstance(body, bytes):
            hdrs["Content-Length"] = str(len(body))
        elif body is not None:
            if length is not None:
                hdrs["Content-Length"] = str(length)
            else:
                hdrs["Transfer-Encoding"] = "chunked"
        elif method in ("POST", "PUT"):
            hdrs["Content-Length"] = "0"
        lines += [f"{k}: {v}" for k, v in hdrs.items()]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if isinstance(body, bytes):
            sock.sendall(head + body)
        else:
            sock.sendall(head)
            if body is not None:
                chunked = length is None
                for block in body:
                    if not block:
                        continue
                    if chunked:
                        sock.sendall(f"{len(block):x}\r\n".encode() + block + b"\r\n")
                    else:
                        sock.sendall(block)
                if chunked:
                    sock.sendall(b"0\r\n\r\n")
        resp = Response(sock, reader, method)
        return resp


class JsonRpc:
    """XenAPI over JSON-RPC 2.0 on /jsonrpc: results back, failures raised as ApiFailure."""

    def __init__(self, endpoint: Endpoint, timeout: float | None = None) -> None:
        self.endpoint = endpoint
        self.http = HttpConnection(endpoint, timeout)
        self._id = 0

    def call(self, method: str, params: list[Any]) -> Any:
        self._id += 1
        body = fastjson.dumps({"jsonrpc": "2.0", "method": method, "params": params, "id": self._id}).encode()
        resp = self.http.request("POST", "/jsonrpc", body, {"Content-Type": "application/json"})
        data = resp.read()
        if not resp.keep_alive:
            self.http.close()
        if resp.status != 200:
            raise ApiFailure("INTERNAL_ERROR", [f"HTTP {resp.status} {resp.reason} from {self.endpoint.describe()}"])
        try:
            reply = fastjson.loads(data)
        except ValueError:
            raise ApiFailure("INTERNAL_ERROR", ["unparseable reply from the server"]) from None
        error = reply.get("error")
        if error is not None:
            if isinstance(error, dict):
                raise ApiFailure(str(error.get("message", "INTERNAL_ERROR")), list(error.get("data") or []))
            if isinstance(error, list) and error:
                raise ApiFailure(str(error[0]), list(error[1:]))
            raise ApiFailure("INTERNAL_ERROR", [str(error)])
        return reply.get("result")

    def close(self) -> None:
        self.http.close()
