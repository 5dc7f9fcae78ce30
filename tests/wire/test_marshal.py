from __future__ import annotations

import xmlrpc.client

import pytest

from pyxapi.model import ApiError, load_model
from pyxapi.model.types import BOOL, DATETIME, FLOAT, INT, STRING, Enum, Map, Option, Record, Ref, Set, parse_type
from pyxapi.wire import jsonrpc
from pyxapi.wire import xmlrpc as xml
from pyxapi.wire.marshal import Marshaller, parse_datetime
from pyxapi.wire.xmlrpc import WireError

M = Marshaller(load_model())


def type_error(value, t) -> list[str]:  # type: ignore[no-untyped-def]
    with pytest.raises(ApiError) as e:
        M.decode(value, t, "p")
    return e.value.description


def test_int64_travels_as_string_in_xml_and_number_in_json() -> None:
    assert M.encode(2**40, INT, "xml") == str(2**40)
    assert M.encode(2**40, INT, "json") == 2**40
    assert M.decode("1099511627776", INT, "p") == 2**40
    assert M.decode(7, INT, "p") == 7  # <i4> accepted
    assert type_error("12x", INT) == ["FIELD_TYPE_ERROR", "p"]
    assert type_error(True, INT) == ["FIELD_TYPE_ERROR", "p"]


def test_datetime_forms() -> None:
    assert parse_datetime("2024-01-31T12:34:56Z") == "20240131T12:34:56Z"
    assert parse_datetime("20240131T12:34:56") == "20240131T12:34:56Z"
    assert parse_datetime("yesterday") is None
    assert M.decode(xmlrpc.client.DateTime("20240131T12:34:56Z"), DATETIME, "p") == "20240131T12:34:56Z"
    enc = M.encode("20240131T12:34:56Z", DATETIME, "xml")
    assert isinstance(enc, xmlrpc.client.DateTime) and enc.value == "20240131T12:34:56Z"
    assert M.encode("20240131T12:34:56Z", DATETIME, "json") == "20240131T12:34:56Z"


def test_enums_sets_maps_refs_options() -> None:
    power = Enum("vm_power_state")
    assert M.decode("halted", power, "p") == "Halted"  # xapi matches enum values without case
    assert type_error("Exploded", power) == ["FIELD_TYPE_ERROR", "p"]
    assert M.decode(["a", "b", "a"], Set(STRING), "p") == ["a", "b"]
    assert M.decode({"1": 0.5}, Map(INT, FLOAT), "p") == {1: 0.5}
    assert M.encode({1: 0.5}, Map(INT, FLOAT), "xml") == {"1": 0.5}
    assert M.decode("OpaqueRef:x", Ref("VM"), "p") == "OpaqueRef:x"
    assert M.decode(None, Option(STRING), "p") is None
    assert M.decode("true", BOOL, "p") is True
    assert type_error(["x"], STRING) == ["FIELD_TYPE_ERROR", "p"]
    assert M.encode(float("nan"), FLOAT, "json") == "nan"


def test_records_have_every_visible_field_and_ignore_unknown_input() -> None:
    rec = M.decode_record("VM", {"name_label": "x", "VCPUs_max": "4", "bogus": 1}, "args")
    assert rec == {"name_label": "x", "VCPUs_max": 4}
    out = M.encode({"name_label": "x"}, Record("VM"), "xml")
    fields = load_model().classes["VM"].record_fields
    assert set(out) == {f.name for f in fields}
    assert out["VCPUs_max"] == "0" and out["power_state"] == "Halted"


def test_type_parser_round_trips() -> None:
    for text in ["(string -> VM ref) map", "event record set", "enum vm_power_state set", "int option"]:
        t = parse_type(text)
        assert t is not None
    assert parse_type("(string -> VM ref) map") == Map(STRING, Ref("VM"))


def test_xmlrpc_request_parsing() -> None:
    body = xmlrpc.client.dumps(("OpaqueRef:s", 5, None), "VM.get_record", allow_none=True).encode()
    method, params = xml.parse_request(body)
    assert method == "VM.get_record" and params == ["OpaqueRef:s", 5, None]
    bare = (
        b"<?xml version='1.0'?><methodCall><methodName>x.y</methodName><params>"
        b"<param><value>plain</value></param><param><value><i8>9</i8></value></param></params></methodCall>"
    )
    assert xml.parse_request(bare) == ("x.y", ["plain", 9])
    for bad in [b"", b"<methodCall>", b"not xml at all", b"<methodCall><params/></methodCall>"]:
        with pytest.raises(WireError):
            xml.parse_request(bad)


def test_xmlrpc_replies_and_task_results() -> None:
    ok = xmlrpc.client.loads(xml.success("OpaqueRef:a"))[0][0]
    assert ok == {"Status": "Success", "Value": "OpaqueRef:a"}
    err = xmlrpc.client.loads(xml.failure(ApiError("HANDLE_INVALID", "VM", "OpaqueRef:b")))[0][0]
    assert err == {"Status": "Failure", "ErrorDescription": ["HANDLE_INVALID", "VM", "OpaqueRef:b"]}
    assert xml.task_result("OpaqueRef:a") == "<value>OpaqueRef:a</value>"
    assert xml.task_result("") == ""
    assert "<array>" in xml.task_result(["a", "b"])


def test_jsonrpc_envelopes() -> None:
    v1 = jsonrpc.parse_request(b'{"method": "a.b", "params": [1], "id": 3}')
    v2 = jsonrpc.parse_request(b'{"jsonrpc": "2.0", "method": "a.b", "params": [], "id": "x"}')
    assert not v1.v2 and v2.v2
    assert jsonrpc.success(v1, 5) == b'{"result":5,"error":null,"id":3}'
    assert jsonrpc.success(v2, 5) == b'{"jsonrpc":"2.0","result":5,"id":"x"}'
    assert (
        jsonrpc.failure(v2, ApiError("X", "p"))
        == b'{"jsonrpc":"2.0","error":{"code":1,"message":"X","data":["p"]},"id":"x"}'
    )
    for bad in [b"[]", b'{"method": 1, "id": 1}', b'{"method": "a", "params": [], "id": null}', b"{"]:
        with pytest.raises(WireError):
            jsonrpc.parse_request(bad)
