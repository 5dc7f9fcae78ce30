"""A compact XML-RPC value writer shaped like xapi's (ocaml-rpc) output.

xapi writes no whitespace between elements and strings as bare `<value>text</value>`; some
clients (Xen Orchestra's parser keeps whitespace) depend on exactly that, and Python's
xmlrpc.client.dumps writes neither. Values here are already wire values (marshal.py made
int64s into strings), so Python ints are the rare true XML-RPC ints (valid_ref_counts).
"""

from __future__ import annotations

import math
import xmlrpc.client
from datetime import datetime
from typing import Any


def escape(text: str) -> str:
    # Most strings need no escaping; checking first is ~10x cheaper than translating every one.
    if "&" in text or "<" in text or ">" in text:
        return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text


def write_value(value: Any, out: list[str]) -> None:
    if isinstance(value, str):
        out.append(f"<value>{escape(value)}</value>" if value else "<value></value>")
    elif isinstance(value, bool):
        out.append("<value><boolean>1</boolean></value>" if value else "<value><boolean>0</boolean></value>")
    elif isinstance(value, int):
        out.append(f"<value><int>{value}</int></value>")
    elif isinstance(value, float):
        out.append(f"<value><double>{_double(value)}</double></value>")
    elif isinstance(value, dict):
        out.append("<value><struct>")
        for k, v in value.items():
            out.append(f"<member><name>{escape(str(k))}</name>")
            write_value(v, out)
            out.append("</member>")
        out.append("</struct></value>")
    elif isinstance(value, list | tuple):
        out.append("<value><array><data>")
        for v in value:
            write_value(v, out)
        out.append("</data></array></value>")
    elif isinstance(value, xmlrpc.client.DateTime):
        out.append(f"<value><dateTime.iso8601>{value.value}</dateTime.iso8601></value>")
    elif isinstance(value, datetime):
        out.append(f"<value><dateTime.iso8601>{value.strftime('%Y%m%dT%H:%M:%SZ')}</dateTime.iso8601></value>")
    elif value is None:
        out.append("<value><nil/></value>")
    else:
        raise TypeError(f"cannot write {type(value).__name__} as XML-RPC")


def _double(value: float) -> str:
    if math.isnan(value) or math.isinf(value):
        return str(value)
    return repr(value)


def value_xml(value: Any) -> str:
    out: list[str] = []
    write_value(value, out)
    return "".join(out)


def method_response(value: Any) -> bytes:
    out = ['<?xml version="1.0"?><methodResponse><params><param>']
    write_value(value, out)
    out.append("</param></params></methodResponse>")
    return "".join(out).encode()
