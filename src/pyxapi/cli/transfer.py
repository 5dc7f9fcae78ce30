"""Files to and from the daemon's HTTP handlers (GET /export, PUT /import, /import_raw_vdi,
/export_raw_vdi), each tied to a task the client creates, as xe does: the handler reports
progress, result and errors on the task; a progress bar shows on a terminal."""

from __future__ import annotations

import contextlib
import os
import select
import sys
import time
from urllib.parse import quote

from pyxapi.cli.connection import HttpConnection, Response
from pyxapi.cli.errors import ApiFailure, CliFailure, XeExit
from pyxapi.cli.tasks import outcome, track

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any, BinaryIO

    from pyxapi.cli.ctx import Ctx

BLOCK = 1 << 20
CONTINUE_WAIT = 5.0  # how long to wait for `100 Continue` before sending the body anyway
TASK_WAIT = 600.0  # after the bytes have moved, how long the handler may take to finish its task


class Progress:
    """`\\r[#####.....]  45%  1.2 GiB  80.0 MiB/s` on stderr when it is a terminal (or asked for)."""

    def __init__(self, total: int | None, enabled: bool) -> None:
        self.total = total
        self.enabled = enabled
        self.done = 0
        self.start = time.monotonic()
        self._last = 0.0

    def add(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and now - self._last >= 0.2:
            self._last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        rate = self.done / max(now - self.start, 1e-6)
        tail = f"{_human(self.done)}  {_human(rate)}/s"
        if self.total:
            frac = min(self.done / self.total, 1.0)
            bar = "#" * int(frac * 40)
            line = f"\r[{bar:<40}] {int(frac * 100):3d}%  {tail}"
        else:
            line = f"\r{tail}"
        sys.stderr.write(line)
        sys.stderr.flush()

    def finish(self) -> None:
        if self.enabled:
            self._draw(time.monotonic())
            sys.stderr.write("\n")
            sys.stderr.flush()


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def show_progress(c: Ctx) -> bool:
    return c.flag("progress") if c.has("progress") else sys.stderr.isatty()


def path_with(path: str, query: dict[str, str]) -> str:
    return path + "?" + "&".join(f"{k}={quote(str(v), safe='')}" for k, v in query.items())


def _wait_readable(conn: HttpConnection, seconds: float) -> bool:
    sock, reader = conn._connect()
    if reader.buf:
        return True
    ready, _, _ = select.select([sock], [], [], seconds)
    return bool(ready)


def _file_blocks(f: BinaryIO, progress: Progress) -> Iterator[bytes]:
    while block := f.read(BLOCK):
        progress.add(len(block))
        yield block


def _drain(conn: HttpConnection, seconds: float = 60.0) -> None:
    """Read until the server closes the connection (bounded)."""
    sock, reader = conn._connect()
    reader.buf = b""
    sock.settimeout(seconds)
    try:
        while sock.recv(1 << 16):
            pass
    except OSError:
        pass


def _http_error(resp: Response) -> str:
    body = resp.read().decode("utf-8", "replace").strip()
    return f"HTTP {resp.status} {resp.reason}" + (f": {body}" if body else "")


class Transfer:
    """One task-tracked HTTP transfer."""

    def __init__(self, c: Ctx, label: str) -> None:
        self.c = c
        self.task = str(c.call("task.create", label, ""))

    def query(self, **extra: str) -> dict[str, str]:
        return {"session_id": self.c.api.session, "task_id": self.task, **extra}

    def finish(self, http_error: str | None) -> str:
        """The task's result; its error if it failed; the HTTP error if the task never ran."""
        try:
            rec = self.c.call("task.get_record", self.task)
            if rec["status"] == "pending" and http_error is None:
                rec = track(self.c.api, self.task, deadline=time.monotonic() + TASK_WAIT)
            if rec["status"] != "pending":
                return outcome(self.task, rec)
            raise CliFailure(http_error or "the server did not finish the transfer's task")
        finally:
            self._drop_task()

    def _drop_task(self) -> None:
        with contextlib.suppress(ApiFailure):
            self.c.call("task.destroy", self.task)

    def download(self, path: str, query: dict[str, str], filename: str) -> str:
        """GET into `filename` (created, never overwritten; "" for stdout)."""
        try:
            out = self._create(filename)
        except XeExit:
            self._drop_task()
            raise
        conn = HttpConnection(self.c.api.rpc.endpoint)
        error = None
        done = False
        try:
            # Like xe's HTTP/1.0 requests: the server ends the exchange by closing, and xe reads
            # to the end, so a handler finishing its task after the last byte is never cut short.
            resp = conn.request("GET", path_with(path, query), headers={"Connection": "close"})
            if resp.status == 200:
                length = resp.headers.get("content-length")
                progress = Progress(int(length) if length else None, show_progress(self.c) and filename != "")
                for block in resp.iter_body():
                    out.write(block)
                    progress.add(len(block))
                out.flush()
                _drain(conn)
                progress.finish()
                done = True
            else:
                error = _http_error(resp)
        except (ConnectionError, OSError) as e:
            error = f"the connection broke: {e}"
        finally:
            conn.close()
            if filename:
                out.close()
                if not done:
                    os.unlink(filename)
        return self.finish(error)

    @staticmethod
    def _create(filename: str) -> BinaryIO:
        if filename == "":
            return sys.stdout.buffer
        try:
            fd = os.open(filename, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as e:
            sys.stderr.write(f"Operation failed. Error: {filename}: {e.strerror}\n")
            raise XeExit(1) from None
        return os.fdopen(fd, "wb")

    def upload(self, path: str, query: dict[str, str], filename: str) -> str:
        """PUT `filename` with a Content-Length, streaming it after the server's go-ahead."""
        try:
            f = open(filename, "rb")  # noqa: SIM115 - closed below, after the streaming
        except OSError:
            self._drop_task()
            sys.stderr.write(f"Operation failed. Error: file '{filename}' does not exist\n")
            raise XeExit(1) from None
        conn = HttpConnection(self.c.api.rpc.endpoint)
        error = None
        try:
            size = os.fstat(f.fileno()).st_size
            progress = Progress(size, show_progress(self.c))
            resp = self._put(conn, path_with(path, query), f, size, progress)
            if resp.status == 200:
                resp.read()  # the handler ends its answer when the import is done
                _drain(conn)
            else:
                error = _http_error(resp)
            progress.finish()
        except (ConnectionError, OSError) as e:
            error = f"the connection broke: {e}"
        finally:
            f.close()
            conn.close()
        return self.finish(error)

    def _put(self, conn: HttpConnection, target: str, f: BinaryIO, size: int, progress: Progress) -> Response:
        sock, reader = conn._connect()
        host = "localhost" if conn.endpoint.unix_path else conn.endpoint.host
        head = (
            f"PUT {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: xe-cli/pyxapi\r\n"
            f"Content-Length: {size}\r\nContent-Type: application/octet-stream\r\nExpect: 100-continue\r\n"
            "Connection: close\r\n\r\n"
        )
        sock.sendall(head.encode("latin-1"))
        early: Response | None = None
        if _wait_readable(conn, CONTINUE_WAIT):
            early = Response(sock, reader, "PUT")
            if early.status >= 300:
                return early  # refused before any byte of the file moved
            if early.status == 100:
                early = None
        for block in _file_blocks(f, progress):
            sock.sendall(block)
        return early or self._final(sock, reader)

    @staticmethod
    def _final(sock: Any, reader: Any) -> Response:
        while True:
            resp = Response(sock, reader, "PUT")
            if resp.status != 100:
                return resp
