from __future__ import annotations

import json
from pathlib import Path

import pytest

from pyxapi.model import load_model

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT.parent / "shared" / "xenapi"


def test_model_matches_the_reference_when_it_is_beside_the_checkout() -> None:
    """The committed model data is what scripts/gen_model.py makes from ../shared/xenapi."""
    if not (REFERENCE / "datamodel.json").exists():
        # CI and developers have shared/ beside the checkout; a bare clone elsewhere does not.
        pytest.skip(f"the XenAPI reference is not beside this checkout ({REFERENCE})")
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen_model", ROOT / "scripts" / "gen_model.py")
    assert spec and spec.loader
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    fresh = gen.convert(REFERENCE)
    committed = json.loads((ROOT / "src" / "pyxapi" / "model" / "data" / "xenapi.json").read_text())
    assert fresh == committed, "run `python3 scripts/gen_model.py` and commit the result"


def test_model_facts() -> None:
    m = load_model()
    assert m.api_version == (2, 23)
    assert len(m.classes) == 73
    start = m.classes["VM"].messages["start"]
    assert [p.name for p in start.params] == ["vm", "start_paused", "force"]
    assert start.is_async and not start.static and start.session
    login = m.classes["session"].messages["login_with_password"]
    assert not login.session and login.min_params == 2 and len(login.params) == 4
    assert m.errors["HANDLE_INVALID"] == ("class", "handle")
    assert "vm-operator" in (start.roles or ())
    # descriptions are not carried over from the reference
    raw = (Path(__file__).resolve().parents[2] / "src/pyxapi/model/data/xenapi.json").read_text()
    assert "This function can only be called with the VM is in the Halted State" not in raw
