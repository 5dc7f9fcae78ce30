"""JSON-RPC 1.0 and 2.0 envelopes, as xapi speaks them on /jsonrpc."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pyxapi.model.errors import ApiError
from pyxapi.wire.xmlrpc import WireError


@dataclass(slots=True)
class JsonRequest:
    method: str
    params: list[Any]
    id: Any
    v2: bool


def parse_request(body: bytes) -> JsonRequest:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise WireError(f"malformed JSON-RPC request: {e}") from None
    if not isinstance(doc, dict):
        raise WireError("JSON-RPC request must be an object")
    method = doc.get("method")
    params = doc.get("params", [])
    if not isinstance(method, str) or not isinstance(params, list):
        raise WireError("JSON-RPC request needs a method string and a params array")
    if doc.get("id") is None:
        raise WireError("JSON-RPC request needs a non-null id (notifications are not supported)")
    return JsonRequest(method, params, doc["id"], doc.get("jsonrpc") == "2.0")


def success(req: JsonRequest, value: Any) -> bytes:
    if req.v2:
        return _dump({"jsonrpc": "2.0", "result": value, "id": req.id})
    return _dump({"result": value, "error": None, "id": req.id})


def failure(req: JsonRequest, error: ApiError) -> bytes:
    if req.v2:
        return _dump(
            {"jsonrpc": "2.0", "error": {"code": 1, "message": error.code, "data": error.params}, "id": req.id}
        )
    return _dump({"result": None, "error": error.description, "id": req.id})


def _dump(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()
