"""How a simulation grows with its owners (issue 26): memory, time, log bytes, report time.

For each ``--owners N:K`` (N simulated owners, K sampled per round) one real
``fedshield simulate`` runs (IID partition of the built-in IMDB, ``--rounds`` rounds,
the defaults otherwise) in its own process, tagged in its environment as the tests tag
theirs, so every process it starts (Ray's GCS, raylet, workers) is found through
``/proc`` by the tag. Every 0.2 s the sampler reads the driver's RSS and the sum over the
tagged process tree's; the table shows each one's peak. Then:

- seconds per round: the wall time from the first round line to the last, per round;
- audit bytes per owner-round: every owner log under ``--out/audit`` over the owner-rounds
  that ran (sampled owners x rounds);
- report time: ``fedshield audit report`` over the run, wall seconds.

    python bench/scale.py --owners 100:10 1000:100 10000:100 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from bench_machine import machine, provenance
from tables import print_table, write_json

TAG = "FEDSHIELD_BENCH_SCALE"
FEDSHIELD = [sys.executable, "-c", "from fedshield.cli.app import main; main()"]
PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss(pid: str) -> int:
    """Resident bytes of one process (0 when it is gone)."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _tagged(tag: str) -> list[str]:
    """The processes whose environment carries ``TAG=tag``."""
    found = []
    marker = f"{TAG}={tag}".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker in (proc / "environ").read_bytes():
                found.append(proc.name)
        except OSError:
            continue
    return found


class PeakSampler:
    """Peak RSS of the driver and of every tagged process together, sampled in a thread."""

    def __init__(self, driver_pid: int, tag: str):
        self.driver_pid, self.tag = str(driver_pid), tag
        self.driver_peak = self.tree_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.driver_peak = max(self.driver_peak, _rss(self.driver_pid))
            self.tree_peak = max(self.tree_peak, sum(_rss(p) for p in _tagged(self.tag)))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def run(owners: int, sampled: int, rounds: int, work: Path) -> dict:
    out = work / f"run-{owners}"
    tag = uuid.uuid4().hex
    env = {**os.environ, TAG: tag, "FLWR_TELEMETRY_ENABLED": "0"}
    command = [
        *FEDSHIELD,
        "simulate",
        *("--clients", str(owners), "--fraction-train", f"{sampled / owners:.6g}"),
        *("--rounds", str(rounds), "--partition", "iid", "--out", str(out)),
    ]
    start = time.perf_counter()
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    sampler = PeakSampler(proc.pid, tag)
    round_times: list[float] = []
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if re.match(r"round=\d+ ", line) and not line.startswith("round=0 "):
            round_times.append(time.perf_counter())
    proc.wait()
    wall = time.perf_counter() - start
    sampler.stop()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {proc.returncode}:\n{''.join(lines[-40:])}")
    owner_logs = [p for p in (out / "audit").glob("*/audit.jsonl") if p.parent.name != "server"]
    log_bytes = sum(p.stat().st_size for p in owner_logs)
    report_start = time.perf_counter()
    report = subprocess.run(
        [*FEDSHIELD, "audit", "report", str(out / "audit"), "--out", str(out / "report")],
        capture_output=True,
        text=True,
        env=env,
    )
    report_s = time.perf_counter() - report_start
    per_round = (
        (round_times[-1] - round_times[0]) / (len(round_times) - 1)
        if len(round_times) > 1
        else float("nan")
    )
    return {
        "owners": owners,
        "sampled": sampled,
        "rounds": rounds,
        "wall-s": wall,
        "s-per-round": per_round,
        "driver-peak-rss-mb": sampler.driver_peak / 2**20,
        "tree-peak-rss-mb": sampler.tree_peak / 2**20,
        "owner-logs": len(owner_logs),
        "audit-bytes-per-owner-round": log_bytes / max(1, sampled * rounds),
        "report-s": report_s,
        "report-rc": report.returncode,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--owners", nargs="+", default=["100:10", "1000:100", "10000:100"], help="N:K")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    host = machine()
    print(f"machine: {host['uname']}; {host['nproc']} cores; load {host['loadavg']}\n")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as work:
        for spec in args.owners:
            owners, sampled = (int(x) for x in spec.split(":"))
            results.append(run(owners, sampled, args.rounds, Path(work)))
            print(results[-1], flush=True)
    print_table(
        (
            "owners",
            "sampled / round",
            "driver peak RSS (MB)",
            "process tree peak RSS (MB)",
            "s / round",
            "audit bytes / owner-round",
            "report s",
            "wall s",
        ),
        [
            [
                f"{r['owners']:,}",
                str(r["sampled"]),
                f"{r['driver-peak-rss-mb']:.0f}",
                f"{r['tree-peak-rss-mb']:.0f}",
                f"{r['s-per-round']:.1f}",
                f"{r['audit-bytes-per-owner-round']:,.0f}",
                f"{r['report-s']:.1f}"
                + ("" if r["report-rc"] == 0 else f" (exit {r['report-rc']})"),
                f"{r['wall-s']:.0f}",
            ]
            for r in results
        ],
    )
    write_json(
        args.json,
        {"provenance": provenance(), "args": vars(args) | {"json": None}, "rows": results},
    )


if __name__ == "__main__":
    main()
