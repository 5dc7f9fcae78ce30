"""ova.xml: the XML-RPC value at the head of an XVA.

    <value><struct>
      <member><name>version</name><value><struct> hostname, date, product_version, product_brand,
              build_number, xapi_major, xapi_minor, export_vsn </struct></value></member>
      <member><name>objects</name><value><array><data>
              <value><struct> class, id ("Ref:N"), snapshot (the object's record) </struct></value> …
    </struct></value>

Written as xapi writes it (ocaml-rpc's non-strict form: strings and numbers as bare `<value>text</value>`,
no XML declaration); read leniently (typed or bare scalars, with or without a declaration), but with a
size bound and no DTD, so entity tricks cannot blow it up.
"""

from __future__ import annotations

import re
import xmlrpc.client
from dataclasses import dataclass
from typing import Any
from xml.parsers.expat import ExpatError

from pyxapi.wire.xmlwrite import value_xml
from pyxapi.xva.errors import ImportFailure, IncompatibleVersion

FILENAME = "ova.xml"
MAX_SIZE = 64 << 20
EXPORT_VSN = 2  # inline per-chunk checksums, no trailing checksum table
# Written as the xapi version that produced the archive. xapi refuses archives from a newer xapi than
# itself, so the oldest version that reads this layout (export_vsn 2, SHA-1 chunk checksums) is named:
# every XenServer/XCP-ng release then accepts pyxapi's exports.
EXPORT_XAPI_VERSION = (1, 1)

_DECLARATION = re.compile(rb"^\s*<\?xml[^>]*\?>", re.S)
_DTD = re.compile(rb"<!(DOCTYPE|ENTITY)", re.I)


@dataclass(frozen=True, slots=True)
class Version:
    hostname: str
    date: str
    product_version: str
    product_brand: str
    build_number: str
    xapi_major: int
    xapi_minor: int
    export_vsn: int = EXPORT_VSN


@dataclass(slots=True)
class ExportObject:
    cls: str
    id: str
    snapshot: dict[str, Any]  # wire values: strings, bools, floats, lists, dicts, DateTime


def encode(version: Version, objects: list[ExportObject]) -> bytes:
    value = {
        "version": {
            "hostname": version.hostname,
            "date": version.date,
            "product_version": version.product_version,
            "product_brand": version.product_brand,
            "build_number": version.build_number,
            "xapi_major": str(version.xapi_major),
            "xapi_minor": str(version.xapi_minor),
            "export_vsn": str(version.export_vsn),
        },
        "objects": [{"class": o.cls, "id": o.id, "snapshot": o.snapshot} for o in objects],
    }
    return value_xml(value).encode("utf-8")


def decode(data: bytes) -> tuple[Version, list[ExportObject]]:
    """Parse ova.xml; ImportFailure if it is not the document described above."""
    if len(data) > MAX_SIZE:
        raise ImportFailure(f"ova.xml of {len(data)} bytes is larger than {MAX_SIZE}")
    if _DTD.search(data):
        raise ImportFailure("ova.xml must not contain a DTD or entity declarations")
    body = _DECLARATION.sub(b"", data, count=1)
    if b"<appliance" in body[:4096]:
        raise ImportFailure("legacy (Zurich/Geneva) XVA archives are not supported")
    try:
        (value,), _ = xmlrpc.client.loads(b"<params><param>" + body + b"</param></params>")
    except (ExpatError, xmlrpc.client.ResponseError, ValueError, TypeError, IndexError, KeyError) as e:
        raise ImportFailure(f"ova.xml is not a valid XML-RPC value: {e}") from None
    if not isinstance(value, dict) or not isinstance(value.get("version"), dict):
        raise ImportFailure("ova.xml has no version struct")
    objects = value.get("objects")
    if not isinstance(objects, list):
        raise ImportFailure("ova.xml has no objects array")
    return _version(value["version"]), [_object(o) for o in objects]


def check_compatible(version: Version) -> None:
    """Refuse a layout this reader does not know (a future export_vsn)."""
    if version.export_vsn > EXPORT_VSN:
        raise IncompatibleVersion()


def _version(raw: dict[str, Any]) -> Version:
    def text(key: str) -> str:
        v = raw.get(key, "")
        return v if isinstance(v, str) else str(v)

    def number(key: str, default: int | None = None) -> int:
        v = raw.get(key)
        if v is None and default is not None:
            return default
        try:
            return int(v)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ImportFailure(f"ova.xml version field {key} is missing or not a number") from None

    return Version(
        text("hostname"),
        text("date"),
        text("product_version"),
        text("product_brand"),
        text("build_number"),
        number("xapi_major"),
        number("xapi_minor"),
        number("export_vsn", 0),
    )


def _object(raw: Any) -> ExportObject:
    if not isinstance(raw, dict):
        raise ImportFailure("ova.xml object is not a struct")
    cls, ident, snapshot = raw.get("class"), raw.get("id"), raw.get("snapshot")
    if not isinstance(cls, str) or not isinstance(ident, str) or not isinstance(snapshot, dict):
        raise ImportFailure("ova.xml object needs a class, an id and a snapshot struct")
    return ExportObject(cls, ident, snapshot)
