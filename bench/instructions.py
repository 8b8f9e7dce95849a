"""User-space instructions per request, counted by valgrind's callgrind: a measure of
what a feature costs that a noisy machine does not blur (CPU seconds per request vary by
a third from run to run on a shared VM; instruction counts by a fraction of a percent).
It leaves out the kernel's work (the TCP stack, the file writes), which is about half
of a hello request's CPU and the same with or without a feature, so a feature's share
of the whole is smaller than its share here.

    python bench/instructions.py                       # hello, plain / access log / metrics
    python bench/instructions.py --requests 20000 --variants plain,access_log

Each variant runs Tapster under callgrind (instrumentation switched on once it serves),
warms up with wrk, zeroes the counters, serves wrk for a fixed time, and divides the
instructions executed by the requests wrk completed. Under valgrind the threads run one
at a time, so batching differs from a real run; the comparison between variants is what
counts.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
PY = sys.executable

#: variant -> extra Tapster options ({tmp} is a scratch directory, {port2} a second port)
VARIANTS = {
    "plain": [],
    "access_log": ["--access-log={tmp}/access.log"],
    "access_log_json": ["--access-log={tmp}/access.log", "--access-log-format=json"],
    "metrics": ["--metrics-listen=127.0.0.1:{port2}"],
}


def run(cmd: list[str]) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def wrk(port: int, seconds: int) -> int:
    out = run(["wrk", "-t1", "-c16", f"-d{seconds}s", f"http://127.0.0.1:{port}/"])
    m = re.search(r"^\s+(\d+) requests in", out, re.M)
    if not m:
        raise RuntimeError(f"wrk said: {out}")
    return int(m.group(1))


def wait_serving(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode}")
        with contextlib.suppress(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read()
            return
        time.sleep(1)
    raise RuntimeError("server did not start under valgrind")


def measure(variant: str, port: int, seconds: int) -> float:
    with tempfile.TemporaryDirectory(prefix="tapster-instr-") as tmp:
        options = [o.format(tmp=tmp, port2=port + 1) for o in VARIANTS[variant]]
        out = os.path.join(tmp, "callgrind.out")
        cmd = [
            "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p", "--instr-atstart=no",
            PY, "-m", "tapster", f"--listen=127.0.0.1:{port}", *options, "apps:hello",
        ]  # fmt: skip
        env = dict(os.environ, PYTHONPATH=HERE)
        proc = subprocess.Popen(cmd, cwd=HERE, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_serving(port, proc)
            run(["callgrind_control", "-i", "on", str(proc.pid)])
            wrk(port, 3)
            run(["callgrind_control", "-z", str(proc.pid)])
            requests = wrk(port, seconds)
            run(["callgrind_control", "-d", str(proc.pid)])
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        dumps = [p for p in glob.glob(out + ".*") if os.path.getsize(p) > 0]
        totals = []
        for path in dumps:
            with open(path) as f:
                m = re.search(r"^summary: (\d+)", f.read(), re.M)
                if m:
                    totals.append(int(m.group(1)))
        if not totals:
            raise RuntimeError("callgrind wrote no counts")
        # The dump taken right after the measured run is the largest (the final dump at
        # exit holds only the shutdown).
        return max(totals) / requests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="plain,access_log,metrics")
    parser.add_argument("--seconds", type=int, default=10, help="the measured wrk run")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--port", type=int, default=18600)
    args = parser.parse_args()
    for tool in ("valgrind", "callgrind_control", "wrk"):
        if shutil.which(tool) is None:
            print(f"{tool} is needed (Debian: valgrind, wrk)", file=sys.stderr)
            return 2
    variants = args.variants.split(",")
    counts: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(args.repeat):
        for variant in variants:
            counts[variant].append(measure(variant, args.port, args.seconds))
            print(f"{variant:16} {counts[variant][-1]:10,.0f} instructions/request", flush=True)
    base = min(counts.get("plain", [0.0])) or None
    print("\n| variant | instructions per request | against plain |\n|---|---|---|")
    for variant, values in counts.items():
        best = min(values)
        against = f"{100 * (best / base - 1):+.1f} %" if base and variant != "plain" else ""
        print(f"| {variant} | {best:,.0f} | {against} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
