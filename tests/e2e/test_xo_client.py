"""Xen Orchestra's own XAPI client library, `xen-api` from npm, unchanged, against pyxapi.

tests/e2e/xo/client.mjs drives the library the way XO does: login, pool.get_all_records,
system.listMethods, event.inject + every <class>.get_all_records, then the event.from loop
on every class; it checks its object cache (pool, master host, dom0), calls methods
(VM.create, VM.set_name_label, the record helpers, barrier) and callAsync (Async.* tasks
watched through events), and waits for every change to show in the cache. It prints a JSON
summary, one run per transport: auto, json-rpc, xml-rpc, and auto over TLS.

Needs Node.js >= 18 and npm: the npm dependencies are installed once into
tests/e2e/xo/node_modules from the committed package-lock.json. Without node or npm the
tests fail, on purpose: they are never skipped.

Known pyxapi bugs are strict xfails that only accept a failure with that bug's signature;
run client.mjs by hand (see its header) for the whole JSON summary.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.server_harness import ROOT_PASSWORD, Daemon

XO_DIR = Path(__file__).parent / "xo"
NODE_MAJOR_MIN = 18
STAMP = XO_DIR / "node_modules" / ".pyxapi-install-stamp"


class KnownPyxapiBug(AssertionError):
    """A failure with the signature of one of the pyxapi bugs below; anything else fails for real."""


def _known_bug(run: dict[str, Any]) -> str | None:
    """Which known bug a failed run shows, if any."""
    err = run["error"]
    if err.get("code") == "EVENT_SUBSCRIPTION_PARSE_FAILURE" and "secret" in (err.get("params") or []):
        return "event.from refuses 'secret'"
    if run["transport"] == "xml-rpc" and (
        "@vates/xml-rpc/parser.js" in err.get("stack", "") or "undefined fields" in err["message"]
    ):
        return "XML-RPC replies xen-api cannot parse"
    return None


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"`{name}` is not on PATH. This test runs Xen Orchestra's npm client library "
            f"(tests/e2e/xo/) and needs Node.js >= {NODE_MAJOR_MIN} and npm; install them. "
            "It is deliberately not skipped.",
            pytrace=False,
        )
    return path


def _install_digest() -> str:
    h = hashlib.sha256()
    for name in ("package.json", "package-lock.json"):
        h.update((XO_DIR / name).read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="session")
def node() -> str:
    """The node binary, with tests/e2e/xo/node_modules installed and current."""
    node = _tool("node")
    npm = _tool("npm")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    match = re.match(r"v(\d+)\.", version)
    if match is None or int(match.group(1)) < NODE_MAJOR_MIN:
        pytest.fail(f"Node.js {version} is too old: xen-api needs >= {NODE_MAJOR_MIN}", pytrace=False)
    digest = _install_digest()
    # one installer at a time, should several test runs share this tree
    with open(XO_DIR / ".npm-install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        fresh = STAMP.exists() and STAMP.read_text() == digest
        if not (fresh and (XO_DIR / "node_modules" / "xen-api" / "package.json").exists()):
            done = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=XO_DIR,
                capture_output=True,
                text=True,
                timeout=300,
            )
            if done.returncode != 0:
                pytest.fail(
                    f"`npm ci` in {XO_DIR} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}", pytrace=False
                )
            STAMP.write_text(digest)
    return node


def _run_client(node: str, *args: str) -> dict[str, Any]:
    env = dict(os.environ, XAPI_USER="root", XAPI_PASSWORD=ROOT_PASSWORD)
    done = subprocess.run(
        [node, str(XO_DIR / "client.mjs"), *args], cwd=XO_DIR, env=env, capture_output=True, text=True, timeout=120
    )
    try:
        summary: dict[str, Any] = json.loads(done.stdout)
    except ValueError:
        pytest.fail(
            f"client.mjs exited {done.returncode} without a JSON summary:\n"
            f"stdout:\n{done.stdout[-4000:]}\nstderr:\n{done.stderr[-4000:]}",
            pytrace=False,
        )
    assert done.returncode == (0 if summary["ok"] else 1), done.stderr[-4000:]
    summary["stderr"] = done.stderr
    return summary


@pytest.fixture(scope="module")
def xo(node: str, daemon: Daemon) -> dict[str, Any]:
    """The summary of XO's client as XO runs it: every transport, and TLS."""
    return _run_client(node, "--url", daemon.url, "--tls-url", daemon.tls_url, "--transport", "auto,json-rpc,xml-rpc")


@pytest.fixture(scope="module")
def xo_without_secret(node: str, daemon: Daemon) -> dict[str, Any]:
    """JSON-RPC again, with the class 'secret' left out of event.from: everything past the bug."""
    return _run_client(node, "--url", daemon.url, "--transport", "json-rpc", "--skip-types", "secret")


def _passed(summary: dict[str, Any], name: str) -> dict[str, Any]:
    """The run, if it passed; otherwise fail with its story (as KnownPyxapiBug if it is one)."""
    run: dict[str, Any] = summary["runs"][name]
    if run["ok"]:
        return run
    err = run["error"]
    known = _known_bug(run)
    message = (
        f"xen-api {summary['xen_api_version']} ({name}, {run['url']}) failed at step {err['step']!r}: "
        f"{err['message']}\n"
        f"  XAPI error: {err.get('code')} {err.get('params')} in {err.get('method')}\n"
        f"  steps passed: {list(run['steps'])}\n"
        f"  requests: {run['requests']}\n"
        f"  event.from errors: {[e['message'] for e in run['event_errors']][:3]}\n"
        f"{err.get('stack', '')}\n"
        f"client.mjs stderr (tail):\n{summary['stderr'][-1500:]}"
    )
    if known is not None:
        raise KnownPyxapiBug(f"known pyxapi bug ({known}): {message}")
    pytest.fail(message, pytrace=False)


def _check_full_run(run: dict[str, Any], path: str) -> None:
    steps = run["steps"]
    assert set(run["requests"]) == {path}, run["requests"]
    counts = steps["objects"]["counts"]
    assert counts["pool"] == 1 and counts["host"] >= 1 and counts["VM"] >= 1, counts
    assert steps["objects"]["dom0_resident_on_master"]
    assert any(vm["is_control_domain"] and vm["power_state"] == "Running" for vm in steps["objects"]["vms"])
    assert steps["objects"]["undefined_fields"] == []
    assert steps["read_only"]["handle_invalid"]["code"] == "HANDLE_INVALID"
    assert int(steps["vm_create"]["memory_static_max"]) == 4 * 1024**3
    assert steps["vm_create"]["power_state"] == "Halted"
    assert steps["record_helpers"]["other_config"] == {"xo:key": "value", "xo:other": "x"}
    assert steps["async_create"]["result"].startswith("OpaqueRef:")
    assert "success" in steps["async_create"]["task_statuses_seen"]
    assert steps["async_void"]["result"] == ""
    assert steps["async_failure"]["code"] == "HANDLE_INVALID"
    assert "destroy" in steps and "tasks" in steps


@pytest.mark.parametrize(
    ("name", "path"),
    [
        pytest.param("json-rpc", "/jsonrpc"),
        pytest.param("auto", "/jsonrpc"),  # auto tries JSON-RPC first
        pytest.param("tls", "/jsonrpc"),
        pytest.param("xml-rpc", "/xmlrpc"),
    ],
)
def test_xo_client(xo: dict[str, Any], name: str, path: str) -> None:
    _check_full_run(_passed(xo, name), path)


@pytest.mark.parametrize("name", ["json-rpc", "auto", "tls", pytest.param("xml-rpc")])
def test_xo_client_connects_and_caches_the_pool(xo: dict[str, Any], name: str) -> None:
    """What works whatever the event.from bug: login, introspection, initial fetch, references."""
    run = xo["runs"][name]
    steps = run["steps"]
    if "objects" not in steps:
        _passed(xo, name)  # raises, with the failure
    assert steps["connect"]["status"] == "connected" and steps["connect"]["classes"] > 50
    assert steps["connect"]["pool"].startswith("OpaqueRef:")
    assert steps["objects"]["counts"]["pool"] == 1 and steps["objects"]["counts"]["host"] >= 1
    assert steps["objects"]["dom0_resident_on_master"]
    assert steps["objects"]["undefined_fields"] == []


def test_xo_client_past_the_secret_class(xo_without_secret: dict[str, Any]) -> None:
    """The whole scenario over JSON-RPC once 'secret' is left out of event.from."""
    _check_full_run(_passed(xo_without_secret, "json-rpc"), "/jsonrpc")


def test_xo_client_first_event_from_answers_at_once(xo_without_secret: dict[str, Any]) -> None:
    first = _passed(xo_without_secret, "json-rpc")["steps"]["first_event_from"]
    if not first["returned"]:
        raise KnownPyxapiBug(
            f"no answer from the first event.from (token from event.inject) in {first['waited_ms']} ms"
        )
