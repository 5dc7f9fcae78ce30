"""XML-RPC envelopes: request parsing and xapi-shaped replies.

Values passed in and out are already wire values (marshal.py made int64 strings etc.).
"""

from __future__ import annotations

import xmlrpc.client
from typing import Any
from xml.parsers.expat import ExpatError

from pyxapi.model.errors import ApiError
from pyxapi.wire.xmlwrite import method_response, value_xml


class WireError(Exception):
    """The request could not be understood at all: an HTTP error, not an API failure."""


def parse_request(body: bytes) -> tuple[str, list[Any]]:
    try:
        params, method = xmlrpc.client.loads(body, use_datetime=False, use_builtin_types=False)
    except (ExpatError, xmlrpc.client.ResponseError, ValueError, TypeError, IndexError, KeyError) as e:
        raise WireError(f"malformed XML-RPC request: {e}") from None
    if not method:
        raise WireError("XML-RPC request without methodName")
    return method, list(params)


def success(value: Any) -> bytes:
    return _response({"Status": "Success", "Value": value})


def failure(error: ApiError) -> bytes:
    return _response({"Status": "Failure", "ErrorDescription": error.description})


def bare(value: Any) -> bytes:
    return method_response(value)


def _response(struct: dict[str, Any]) -> bytes:
    return method_response(struct)


def task_result(value: Any) -> str:
    """A task's `result` field: the value's XML-RPC serialisation inside <value>…</value>.

    Strings (refs above all) go bare, as xapi writes them, because clients strip the tags and
    use the rest as the ref.
    """
    if value == "" or value is None:
        return ""
    return value_xml(value)
