"""xe start-up benchmark: the wall time of `xe vm-list` against a running daemon, next to a bare
`python3 -c pass` started the same way in the same run (the floor no Python CLI can go under).

    .venv/bin/python bench/cli.py [--runs N] [--vms N]

The daemon (simulated hypervisor) holds --vms halted VMs besides its control domain. Runs of the
sides alternate so that load on the shared machine hits all of them alike. Reported: median and
p90 wall milliseconds per side, and xe's overhead over the bare interpreter. The goal is
`xe vm-list` <= 150 ms.

xe is measured as installed (its bytecode compiled, as pip does at install time and `make run`
does for the checkout) and cold (no bytecode cache: every module compiled at each start, which
is what a checkout run with PYTHONDONTWRITEBYTECODE=1 and no __pycache__ pays).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: make the tests' harness importable

from tests.server_harness import ROOT_PASSWORD, new_daemon  # noqa: E402

from bench._common import percentile, table  # noqa: E402

GOAL_MS = 150.0
BIN = Path(sys.executable).parent


CACHES = [ROOT / "src" / "pyxapi" / d / "__pycache__" for d in ("", "cli", "cli/commands")]


def timed(argv: list[str], env: dict[str, str]) -> float:
    hide = env.get("BENCH_NO_CLI_PYCACHE") == "1"
    if hide:  # xe's own bytecode out of the way for this run (the standard library keeps its own)
        for d in CACHES:
            d.rename(d.with_name("__pycache__.bench-off"))
    try:
        start = time.perf_counter()
        p = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        elapsed = (time.perf_counter() - start) * 1000
    finally:
        if hide:
            for d in CACHES:
                d.with_name("__pycache__.bench-off").rename(d)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {p.stderr.decode()}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--vms", type=int, default=20)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-cli-"))
    daemon = new_daemon(root)
    daemon.start()
    try:
        sock = daemon.data_dir / "xapi.sock"
        deadline = time.monotonic() + 60
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        env = dict(os.environ, PYXAPI_SOCKET=str(sock), HOME=str(root))
        env.pop("XE_EXTRA_ARGS", None)
        xe = str(BIN / "xe")
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "src" / "pyxapi" / "cli")], check=True)
        subprocess.run([sys.executable, "-m", "compileall", "-q", "-l", str(ROOT / "src" / "pyxapi")], check=True)
        cold = dict(env, PYTHONDONTWRITEBYTECODE="1", BENCH_NO_CLI_PYCACHE="1")
        for i in range(args.vms):
            subprocess.run([xe, "vm-create", f"name-label=bench-{i}"], env=env, check=True, capture_output=True)
        sides = {
            "python3 -c pass": ([sys.executable, "-c", "pass"], env),
            "xe vm-list (local socket)": ([xe, "vm-list"], env),
            "xe vm-list, no bytecode cache": ([xe, "vm-list"], cold),
            "xe vm-list (HTTP, -s -p -u -pw)": (
                [
                    xe,
                    "vm-list",
                    "-s",
                    "localhost",
                    "-p",
                    str(daemon.port),
                    "--nossl",
                    "-u",
                    "root",
                    "-pw",
                    ROOT_PASSWORD,
                ],
                env,
            ),
            "xe vm-list --minimal": ([xe, "vm-list", "--minimal"], env),
        }
        for argv, side_env in sides.values():  # warm the page cache once
            timed(argv, side_env)
        samples: dict[str, list[float]] = {name: [] for name in sides}
        for _ in range(args.runs):
            for name, (argv, side_env) in sides.items():
                samples[name].append(timed(argv, side_env))
    finally:
        daemon.stop()
    base = statistics.median(samples["python3 -c pass"])
    rows = []
    for name, values in samples.items():
        med = statistics.median(values)
        p90 = percentile(sorted(values), 90)
        rows.append([name, f"{med:.1f}", f"{p90:.1f}", f"{med - base:+.1f}", f"{med / base:.2f}x"])
    print(f"xe start-up, {args.runs} runs per side, {args.vms + 1} VMs, load average {os.getloadavg()[0]:.2f}")
    print(table(["command", "median ms", "p90 ms", "over python", "ratio"], rows))
    xe_ms = statistics.median(samples["xe vm-list (local socket)"])
    verdict = "met" if xe_ms <= GOAL_MS else "NOT met"
    print(f"goal: xe vm-list <= {GOAL_MS:.0f} ms wall: {xe_ms:.1f} ms ({verdict})")


if __name__ == "__main__":
    main()
