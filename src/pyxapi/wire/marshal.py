"""Type-directed conversion between wire values and pyxapi's internal values.

Internal values are plain, JSON-compatible Python: int, float, bool, str (strings, enums,
refs, and datetimes as xapi's `YYYYMMDDTHH:MM:SSZ`), list (sets), dict (maps, records) and
None (an empty option). The wire needs type knowledge on the way out (XML-RPC sends int64 as
decimal strings and datetimes as `dateTime.iso8601`), so converters are compiled per type
once and cached.
"""

from __future__ import annotations

import math
import re
import xmlrpc.client
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

from pyxapi.model.errors import FIELD_TYPE_ERROR, ApiError
from pyxapi.model.schema import Model
from pyxapi.model.types import ApiType, Enum, Map, Option, Prim, Record, Ref, Set, Void

Format = Literal["xml", "json"]
Encoder = Callable[[Any], Any]

_INT_RE = re.compile(r"[+-]?\d+\Z")
_DATETIME_FORMATS = (
    "%Y%m%dT%H:%M:%SZ",
    "%Y%m%dT%H:%M:%S",
    "%Y-%m-%dT%H:%M:%SZ",
    "%Y-%m-%dT%H:%M:%S",
    "%Y%m%dT%H%M%SZ",
    "%Y-%m-%dT%H:%M:%S.%fZ",
)
EPOCH = "19700101T00:00:00Z"


def format_datetime(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y%m%dT%H:%M:%SZ")


def now_datetime() -> str:
    return format_datetime(datetime.now(UTC))


def parse_datetime(text: str) -> str | None:
    """Normalise the datetime spellings clients send into xapi's form; None if unparseable."""
    text = text.strip()
    if text.endswith("+00:00"):
        text = text[:-6] + "Z"
    for fmt in _DATETIME_FORMATS:
        try:
            parsed = datetime.strptime(text, fmt)
        except ValueError:
            continue
        return parsed.strftime("%Y%m%dT%H:%M:%SZ")
    return None


class Marshaller:
    """Decodes (with type checks) and encodes values for one model."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self._encoders: dict[tuple[ApiType, Format], Encoder] = {}

    # ---- wire -> internal -------------------------------------------------------------
    def decode(self, value: Any, t: ApiType, name: str) -> Any:
        """Convert a decoded wire value to the internal form, or raise FIELD_TYPE_ERROR [name]."""
        match t:
            case Prim("string"):
                if isinstance(value, str):
                    return value
            case Prim("int"):
                if isinstance(value, int) and not isinstance(value, bool):
                    return value
                if isinstance(value, str) and _INT_RE.match(value.strip()):
                    return int(value)
            case Prim("float"):
                if isinstance(value, int | float) and not isinstance(value, bool):
                    return float(value)
                if isinstance(value, str):
                    try:
                        return float(value)
                    except ValueError:
                        pass
            case Prim("bool"):
                if isinstance(value, bool):
                    return value
                if isinstance(value, str) and value.lower() in ("true", "false"):
                    return value.lower() == "true"
                if isinstance(value, int) and value in (0, 1):
                    return bool(value)
            case Prim("datetime"):
                if isinstance(value, xmlrpc.client.DateTime):
                    value = value.value
                if isinstance(value, datetime):
                    return format_datetime(value if value.tzinfo else value.replace(tzinfo=UTC))
                if isinstance(value, str):
                    parsed = parse_datetime(value)
                    if parsed is not None:
                        return parsed
            case Ref():
                if isinstance(value, str):
                    return value
            case Enum(enum_name):
                if isinstance(value, str):
                    return self._enum_value(enum_name, value, name)
            case Set(item):
                if isinstance(value, list | tuple):
                    out = []
                    for v in value:
                        d = self.decode(v, item, name)
                        if d not in out:
                            out.append(d)
                    return out
            case Map(kt, vt):
                if isinstance(value, dict):
                    return {self.decode(k, kt, name): self.decode(v, vt, name) for k, v in value.items()}
            case Record(cls):
                if isinstance(value, dict):
                    return self.decode_record(cls, value, name)
            case Option(item):
                return None if value is None else self.decode(value, item, name)
            case Void():
                return None
        raise ApiError(FIELD_TYPE_ERROR, name)

    def _enum_value(self, enum_name: str, value: str, name: str) -> str:
        values = self.model.enums.get(enum_name)
        if values is None or value in values:
            return value
        # xapi matches enum values case-insensitively on input.
        for v in values:
            if v.lower() == value.lower():
                return v
        raise ApiError(FIELD_TYPE_ERROR, name)

    def decode_record(self, cls: str, value: dict[str, Any], name: str) -> dict[str, Any]:
        """Decode the fields a client sent; unknown keys are ignored as xapi does."""
        fields = self.model.classes[cls].fields
        out: dict[str, Any] = {}
        for key, v in value.items():
            f = fields.get(key)
            if f is not None and not f.internal_only:
                out[key] = self.decode(v, f.type, key)
        return out

    # ---- internal -> wire -------------------------------------------------------------
    def encoder(self, t: ApiType, fmt: Format) -> Encoder:
        key = (t, fmt)
        enc = self._encoders.get(key)
        if enc is None:
            enc = self._compile(t, fmt)
            self._encoders[key] = enc
        return enc

    def encode(self, value: Any, t: ApiType, fmt: Format) -> Any:
        return self.encoder(t, fmt)(value)

    def _compile(self, t: ApiType, fmt: Format) -> Encoder:
        xml = fmt == "xml"
        match t:
            case Prim("int"):
                return _int_xml if xml else _int_json
            case Prim("float"):
                return _float_xml if xml else _float_json
            case Prim("bool"):
                return bool
            case Prim("datetime"):
                return _datetime_xml if xml else _str_or_epoch
            case Prim() | Ref() | Enum():
                return _str
            case Set(item):
                enc = self.encoder(item, fmt)
                return lambda v: [enc(x) for x in v] if v else []
            case Map(kt, vt):
                kenc = self.encoder(kt, "xml")  # keys are strings on both wires
                venc = self.encoder(vt, fmt)
                return lambda v: {str(kenc(k)): venc(x) for k, x in v.items()} if v else {}
            case Record(cls):
                return self._record_encoder(cls, fmt)
            case Option(item):
                enc = self.encoder(item, fmt)
                return lambda v: None if v is None else enc(v)
            case Void():
                return lambda v: ""
        raise TypeError(t)

    def _record_encoder(self, cls: str, fmt: Format) -> Encoder:
        fields = [(f.name, f.default, self.encoder(f.type, fmt)) for f in self.model.classes[cls].record_fields]

        def encode_record(rec: dict[str, Any]) -> dict[str, Any]:
            out = {}
            for fname, default, enc in fields:
                out[fname] = enc(rec.get(fname, default))
            return out

        return encode_record


def _int_xml(v: Any) -> str:
    return str(int(v)) if v is not None else "0"


def _int_json(v: Any) -> int:
    return int(v) if v is not None else 0


def _float_xml(v: Any) -> float:
    return float(v) if v is not None else 0.0


def _float_json(v: Any) -> float | str:
    f = float(v) if v is not None else 0.0
    # JSON has no NaN/Infinity; xapi's JSON encoder sends them as strings.
    return f if math.isfinite(f) else str(f)


def _str(v: Any) -> str:
    return "" if v is None else str(v)


def _str_or_epoch(v: Any) -> str:
    return v or EPOCH


def _datetime_xml(v: Any) -> xmlrpc.client.DateTime:
    return xmlrpc.client.DateTime(v or EPOCH)
