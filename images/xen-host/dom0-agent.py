#!/usr/bin/env python3
"""Command agent in the Xen test host's dom0: tests and benches outside the VM run commands in dom0.

POST /run with a JSON body {"cmd": "...", "timeout": seconds, "stdin": "..."} and the header X-Token (the token
given on dom0's kernel command line); the reply is JSON {"rc": int, "out": str}. It exists only
in this throw-away test VM, whose port is forwarded to 127.0.0.1 outside.
"""

import hmac
import json
import os
import subprocess
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKEN = os.environ["PYXAPI_AGENT_TOKEN"]


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        if not hmac.compare_digest(self.headers.get("X-Token", ""), TOKEN) or self.path != "/run":
            self.send_error(403)
            return
        req = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        try:
            p = subprocess.run(req["cmd"], shell=True, capture_output=True, text=True, errors="replace",
                               input=req.get("stdin", ""), timeout=float(req.get("timeout", 600)))
            body = {"rc": p.returncode, "out": p.stdout + p.stderr}
        except subprocess.TimeoutExpired as e:
            out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
            body = {"rc": -1, "out": out + f"\n[agent: timed out after {e.timeout}s]"}
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


ThreadingHTTPServer(("0.0.0.0", 8000), Handler).serve_forever()
