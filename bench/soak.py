"""Soak: mixed load on one daemon for a long time; throughput, p99 and memory over time.

``make soak`` (``python -m bench.soak --minutes 10``) starts a SecantusDB and a
daemon, seeds a small marketplace through the API, then drives ``wrk`` (one
thread, keep-alive, ``--latency``) with ``bench/soak.lua`` in back-to-back
slices.  The Lua script rotates reads (ping, fees, category by slug, gig by
id, a search) and writes (notifications, categories) with unique ids.  After
every slice it records requests/s, p99, errors and the daemon's resident
memory (``/proc/PID/status``), and writes ``soak.md`` (a table) and
``soak.png`` (the curves) into ``--out`` (default ``bench/``).  It fails (exit 1) when the
daemon's RSS grew by 5 % or more over the second half of the run.
Loopback only, bounded by ``--minutes``; not part of ``make test``.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
import xmlrpc.client
from pathlib import Path

from bench.loadgen import Workspace

HERE = Path(__file__).resolve().parent
CONNECTIONS = 32


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def daemon_pid(port: int) -> int:
    """The twistd process listening on ``port`` (read from its command line in /proc)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(b"twistd" in part for part in cmdline[:2]) and f"tcp:{port}:".encode() in b" ".join(cmdline):
                return int(entry.name)
    raise RuntimeError(f"no daemon found on port {port}")


def seed(url: str) -> dict[str, str]:
    """A category, a seller with a gig, as the Lua script needs them."""
    rpc = xmlrpc.client.ServerProxy(url, allow_none=True)
    category = rpc.categoriesService.create("Soak testing", "soak-testing", "Long runs")
    seller = rpc.usersService.register("soak_seller", "seller@soak.example", "a long password 1", "freelancer")
    gig = rpc.gigsService.create(seller["user_id"], {
        "title": "Load testing for your service", "description": "I will soak your XML-RPC server for hours.",
        "category": "soak-testing", "price": "45.00", "deliveryTime": 3,
    })
    for answer in (category, seller, gig):
        if not answer.get("success"):
            raise RuntimeError(f"seeding failed: {answer}")
    return {"USER_ID": seller["user_id"], "GIG_ID": gig["gig_id"], "SLUG": "soak-testing"}


LATENCY = re.compile(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
RATE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
ERRORS = re.compile(r"^WORKNET_FAILED (\d+)$", re.MULTILINE)
NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def slice_once(wrk: str, url: str, seconds: int, env: dict[str, str]) -> tuple[float, float, int]:
    """One wrk run: requests/s, p99 ms, errors (transport errors, non-2xx, success false)."""
    done = subprocess.run(
        [wrk, "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", "-s", str(HERE / "soak.lua"), url],
        capture_output=True, text=True, timeout=seconds + 60, env=env, check=True,
    )
    out = done.stdout
    rate = float(RATE.search(out).group(1))  # type: ignore[union-attr]
    value, unit = LATENCY.search(out).groups()  # type: ignore[union-attr]
    errors = sum(int(m.group(1)) for m in ERRORS.finditer(out))
    errors += sum(int(n) for m in SOCKET_ERRORS.finditer(out) for n in m.groups())
    errors += sum(int(m.group(1)) for m in NON_2XX.finditer(out))
    return rate, float(value) * UNIT_MS[unit], errors


def plot(rows: list[tuple[float, float, float, int, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [r[0] / 60 for r in rows]
    figure, (top, middle, bottom) = plt.subplots(3, 1, sharex=True, figsize=(8, 8))
    top.plot(minutes[1:], [r[1] for r in rows[1:]], marker="o")  # row 0 is the memory before any load
    top.set_ylabel("requests/s")
    top.set_ylim(bottom=0)
    middle.plot(minutes[1:], [r[2] for r in rows[1:]], marker="o", color="tab:orange")
    middle.set_ylim(bottom=0)
    middle.set_ylabel("p99 ms")
    bottom.plot(minutes, [r[4] for r in rows], marker="o", color="tab:green")
    bottom.set_ylabel("daemon RSS MiB")
    bottom.set_xlabel("minutes")
    bottom.set_ylim(bottom=0)
    top.set_title(f"WorkNet RPC soak: mixed load, {CONNECTIONS} keep-alive connections (wrk)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--slice", type=int, default=30, help="seconds per wrk run (one row)")
    parser.add_argument("--out", type=Path, default=HERE, help="where soak.md and soak.png go (default bench/)")
    args = parser.parse_args()
    wrk = shutil.which("wrk")
    if wrk is None:
        sys.exit("wrk is not installed: apt-get install wrk (Debian's package)")
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[float, float, float, int, float]] = []  # (elapsed s, req/s, p99 ms, errors, RSS MiB)
    with Workspace("bench-soak") as ws:
        port = ws.daemon("soak")
        url = f"http://127.0.0.1:{port}/RPC2"
        env = {"PATH": "/usr/bin:/bin", **seed(url)}
        pid = daemon_pid(port)
        started = time.monotonic()
        rows.append((0.0, 0.0, 0.0, 0, rss_mib(pid)))
        while time.monotonic() - started < args.minutes * 60:
            rate, p99, errors = slice_once(wrk, url, args.slice, env)
            rows.append((time.monotonic() - started, rate, p99, errors, rss_mib(pid)))
            print(f"{rows[-1][0] / 60:6.1f} min  {rate:8.0f} req/s  p99 {p99:8.2f} ms  errors {errors:5d}  "
                  f"RSS {rows[-1][4]:7.1f} MiB", flush=True)
    half = next(r for r in rows if r[0] >= rows[-1][0] / 2)
    growth = (rows[-1][4] - half[4]) / half[4] * 100
    verdict = "met" if growth < 5 else "NOT met"
    lines = [
        f"# Soak: {args.minutes:g} minutes of mixed load ({CONNECTIONS} connections, wrk, {args.slice} s slices)",
        "",
        "| minute | requests/s | p99 ms | errors | daemon RSS MiB |",
        "|---:|---:|---:|---:|---:|",
        *(f"| {r[0] / 60:.1f} | {r[1]:.0f} | {r[2]:.2f} | {r[3]} | {r[4]:.1f} |" for r in rows[1:]),
        "",
        f"RSS at start of load {rows[0][4]:.1f} MiB; at the half-way mark ({half[0] / 60:.1f} min) {half[4]:.1f} MiB; "
        f"at the end {rows[-1][4]:.1f} MiB: growth over the second half {growth:+.2f} % "
        f"(target < 5 %: {verdict}).",
        "",
        "![soak](soak.png)",
    ]
    (args.out / "soak.md").write_text("\n".join(lines) + "\n")
    plot(rows, args.out / "soak.png")
    print(f"wrote {args.out / 'soak.md'} and {args.out / 'soak.png'}; RSS growth over the second half {growth:+.2f} %")
    if growth >= 5:
        sys.exit(1)


if __name__ == "__main__":
    main()
