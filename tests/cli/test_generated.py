"""The generated commands of every class against a real daemon: <class>-list (default
columns, params=, --minimal, filters), -param-list, -param-get, and the writers on the classes
a fresh host has objects of."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import XenAPI

from pyxapi.cli import table
from tests.cli.conftest import Xe, records

GOLDEN = Path(__file__).parent / "golden"
LABEL = re.compile(r"^\s*\S+ \((?: RO| RW|SRO|SRW|MRO|MRW)\)(?: \[DEPRECATED\])?\s*: ")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
CLASSES = table.class_names()


def api_objects(api: XenAPI.Session, cli: str) -> dict[str, dict]:  # type: ignore[type-arg]
    """What <cli>-list should list: the class's records with xe's default filters applied."""
    spec = table.class_spec(cli)
    recs = getattr(api.xenapi, spec.api).get_all_records()
    if cli == "vm":
        recs = {r: v for r, v in recs.items() if not v["is_a_template"]}
    elif cli == "template":
        recs = {r: v for r, v in recs.items() if v["is_a_template"] and not v["is_a_snapshot"]}
    elif cli == "snapshot":
        recs = {r: v for r, v in recs.items() if v["is_a_snapshot"]}
    return recs  # type: ignore[no-any-return]


def test_there_are_56_classes() -> None:
    assert len(CLASSES) == 56


@pytest.mark.parametrize("cli", CLASSES)
def test_list_default_columns_and_minimal(cli: str, xe: Xe, api: XenAPI.Session) -> None:
    spec = table.class_spec(cli)
    expected = api_objects(api, cli)
    out = xe.ok(f"{cli}-list")
    for line in out.splitlines():
        assert line == "" or LABEL.match(line), line
    recs = records(out)
    assert len(recs) == len(expected)
    shown = [f.name for f in spec.fields if f.name in spec.list_params and not f.hidden]
    for rec in recs:
        assert list(rec) == shown  # record order, not the order of the defaults
    minimal = xe.ok(f"{cli}-list", "--minimal").strip()
    assert sorted(filter(None, minimal.split(","))) == sorted(v["uuid"] for v in expected.values())


@pytest.mark.parametrize("cli", CLASSES)
def test_list_params_all_shows_every_visible_field(cli: str, xe: Xe, api: XenAPI.Session) -> None:
    spec = table.class_spec(cli)
    recs = records(xe.ok(f"{cli}-list", "params=all"))
    visible = [f.name for f in spec.fields if not f.hidden]
    for rec in recs:
        assert list(rec) == visible


@pytest.mark.parametrize("cli", CLASSES)
def test_param_list_and_param_get(cli: str, xe: Xe, api: XenAPI.Session) -> None:
    spec = table.class_spec(cli)
    objects = api_objects(api, cli)
    if not objects:
        # Nothing of this class on a fresh host: the command still runs and says so, as xe does.
        r = xe(f"{cli}-param-list", "uuid=00000000-0000-0000-0000-000000000000")
        assert r.rc == 1 and r.out == ""
        assert r.err.splitlines()[0] in ("No object with this uuid exists.", "Error code: UUID_INVALID")
        return
    rec = next(iter(objects.values()))
    out = xe.ok(f"{cli}-param-list", f"uuid={rec['uuid']}")
    [shown] = records(out)
    assert list(shown) == [f.name for f in spec.fields if not f.hidden]
    assert shown["uuid"] == rec["uuid"]
    assert xe.one(f"{cli}-param-get", f"uuid={rec['uuid']}", "param-name=uuid") == rec["uuid"]
    if "name-label" in spec.by_name:
        assert xe.one(f"{cli}-param-get", f"uuid={rec['uuid']}", "param-name=name-label") == rec["name_label"]


def test_filters_on_plain_map_and_set_fields(xe: Xe) -> None:
    vm = xe.one("vm-install", "template=pyxapi test guest", "new-name-label=filter-me")
    xe.ok("vm-param-set", f"uuid={vm}", "other-config:colour=blue")
    xe.ok("vm-param-add", f"uuid={vm}", "param-name=tags", "param-key=web")
    assert xe.one("vm-list", "name-label=filter-me", "--minimal") == vm
    assert xe.one("vm-list", "other-config:colour=blue", "--minimal") == vm
    assert xe.one("vm-list", "other-config-colour=blue", "--minimal") == vm  # the older spelling
    assert xe.one("vm-list", "tags:contains=web", "--minimal") == vm
    assert xe.one("vm-list", "tags:contains=nope", "--minimal") == ""
    assert xe.one("vm-list", "power-state=halted", "name-label=filter-me", "params=name-label", "--minimal") == (
        "filter-me"
    )
    r = xe("vm-list", "tags:has=web")
    assert (r.rc, r.err) == (1, "Error: Invalid syntax for set filtering (should be set-param:contains=key)\n")
    r = xe("vm-list", "no-such-field=1")
    assert (r.rc, r.err) == (1, "Error: Unknown field 'no-such-field'\n")


def test_param_set_add_remove_clear(xe: Xe, api: XenAPI.Session) -> None:
    vm = xe.one("vm-install", "template=pyxapi test guest", "new-name-label=writes")
    xe.ok(
        "vm-param-set",
        f"uuid={vm}",
        "name-description=described",
        "memory-static-max=512MiB",
        "other-config:a=1",
        "actions-after-crash=Destroy",
    )
    ref = api.xenapi.VM.get_by_uuid(vm)
    rec = api.xenapi.VM.get_record(ref)
    assert rec["name_description"] == "described"
    assert rec["memory_static_max"] == str(512 << 20)
    assert rec["other_config"]["a"] == "1"
    assert rec["actions_after_crash"] == "destroy"
    assert xe.one("vm-param-get", f"uuid={vm}", "param-name=other-config", "param-key=a") == "1"
    xe.ok("vm-param-set", f"uuid={vm}", "other-config:a=2")  # an existing key is replaced
    assert api.xenapi.VM.get_other_config(ref)["a"] == "2"
    xe.ok("vm-param-add", f"uuid={vm}", "param-name=other-config", "b=2", "c=3")
    xe.ok("vm-param-remove", f"uuid={vm}", "param-name=other-config", "param-key=b")
    assert {"a": "2", "c": "3"}.items() <= api.xenapi.VM.get_other_config(ref).items()
    assert "b" not in api.xenapi.VM.get_other_config(ref)
    xe.ok("vm-param-add", f"uuid={vm}", "param-name=tags", "param-key=t1")
    xe.ok("vm-param-add", f"uuid={vm}", "param-name=tags", "param-key=t2")
    assert xe.one("vm-param-get", f"uuid={vm}", "param-name=tags") == "t1, t2"
    xe.ok("vm-param-clear", f"uuid={vm}", "param-name=tags")
    assert api.xenapi.VM.get_tags(ref) == []
    xe.ok("vm-param-clear", f"uuid={vm}", "param-name=other-config")
    assert api.xenapi.VM.get_other_config(ref) == {}
    xe.ok("vm-param-clear", f"uuid={vm}", "param-name=name-description")
    assert api.xenapi.VM.get_name_description(ref) == ""


@pytest.fixture(scope="module")
def spare_vm(xe: Xe) -> str:
    return xe.one("vm-install", "template=pyxapi test guest", "new-name-label=spare")


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["power-state=running"], "Error: Field 'power-state' is read-only.\n"),
        (["VCPUs-max=lots"], "Error: Failed to parse parameter 'VCPUs-max': expecting an integer\n"),
        (
            ["is-a-template=maybe"],
            "Error: Failed to parse parameter 'is-a-template': expecting a boolean (true or false)\n",
        ),
        (["tags=x"], "Error: Field 'tags' is read-only.\n"),
        (["tags:x=y"], "Error: Cannot param-set on set fields\n"),
        (["other-config=x"], "Error: Field 'other-config' is a map or set. use the 'name:key=value' syntax.\n"),
        (["nothing-like-this=1"], "Error: Unknown field 'nothing-like-this'\n"),
    ],
)
def test_param_set_refusals(xe: Xe, spare_vm: str, args: list[str], error: str) -> None:
    r = xe("vm-param-set", f"uuid={spare_vm}", *args)
    assert (r.rc, r.out, r.err) == (1, "", error)


def test_param_get_errors(xe: Xe) -> None:
    vm = xe.one("vm-install", "template=pyxapi test guest", "new-name-label=getter")
    r = xe("vm-param-get", f"uuid={vm}", "param-name=no-field")
    assert (r.rc, r.err) == (1, "Error code: Missing parameter\nError parameters: no-field\n")
    r = xe("vm-param-get", f"uuid={vm}", "param-name=other-config", "param-key=absent")
    assert (r.rc, r.err) == (1, "Error: Key absent not found in map\n")
    r = xe("vm-param-remove", f"uuid={vm}", "param-name=tags", "param-key=absent")
    assert (r.rc, r.err) == (1, "Error: Key absent is not in the set\n")
    r = xe("vm-param-add", f"uuid={vm}", "param-name=name-label", "param-key=x")
    assert (r.rc, r.err) == (1, "Error: Can only add to parameters of type Set or Map\n")
    r = xe("vm-param-clear", f"uuid={vm}", "param-name=uuid")
    assert (r.rc, r.err) == (1, "Error: Can only clear RW parameters\n")
    r = xe("vm-param-remove", f"uuid={vm}", "param-name=allowed-operations", "param-key=start")
    assert (r.rc, r.err) == (1, "Error: Cannot remove parameters from read-only map\n")


def test_references_print_as_uuids_and_names(xe: Xe, api: XenAPI.Session) -> None:
    vm = xe.one("vm-install", "template=pyxapi test guest", "new-name-label=refs")
    sr = xe.one("sr-list", "name-label=Local storage", "--minimal")
    vdi = xe.one("vdi-create", f"sr-uuid={sr}", "name-label=refdisk", "virtual-size=16MiB")
    vbd = xe.one("vbd-create", f"vm-uuid={vm}", f"vdi-uuid={vdi}", "device=3")
    [rec] = records(xe.ok("vbd-list", f"uuid={vbd}", "params=all"))
    assert rec["vm-uuid"] == vm and rec["vm-name-label"] == "refs"
    assert rec["vdi-uuid"] == vdi and rec["vdi-name-label"] == "refdisk"
    assert rec["attachable"] == "<expensive field>"  # lists never compute expensive fields
    [full] = records(xe.ok("vbd-param-list", f"uuid={vbd}"))
    assert full["attachable"].startswith(("true", "false (error:"))
    [vmrec] = records(xe.ok("vm-param-list", f"uuid={vm}"))
    assert vmrec["snapshot-of"] == "<not in database>" and vmrec["resident-on"] == "<not in database>"
    assert vbd in vmrec["VBDs"]


def test_vm_list_matches_golden(xe: Xe, daemon) -> None:  # type: ignore[no-untyped-def]
    vm = xe.one("vm-install", "template=pyxapi test guest", "new-name-label=golden-vm")
    out = xe.ok("vm-list", f"uuid={vm}")
    assert out == (GOLDEN / "vm-list.txt").read_text().replace("<uuid>", vm)
    listing = xe.ok("vm-param-list", f"uuid={vm}")
    normal = UUID.sub("<uuid>", listing).replace(str(daemon.data_dir), "<data>")
    assert normal == (GOLDEN / "vm-param-list.txt").read_text()
