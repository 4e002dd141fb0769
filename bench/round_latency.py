"""Seconds per round: simulation (Ray, in-process messages) against deployment (the
product path: `fedshield server start` = flower-superlink behind fedshield's Fleet
gateway with TLS and node authentication, and 3 x `fedshield client start`), on the same
work: 3 owners x 600 IMDB reviews, the same held-out 600 (`eval-data`), the same rounds.

    python bench/round_latency.py --rounds 8

Prints a Markdown table (median seconds per round over rounds 2..N, round 1 apart as it
includes start-up; the ratio and difference deployed - simulated) with the polling
settings the deployed processes reported in their logs, and writes
bench/results/round_latency.json. Measures whatever fedshield is importable: to compare
two trees, run it twice with PYTHONPATH pointing `fedshield` at each.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from fedshield.common.config import RunConfig
from fedshield.common.data import builtin_csv_path
from fedshield.common.pki import create_node_key, init_ca, issue_server_certificate

# The deployment tests' processes and arguments (tests/support/deployment.py): the bench
# deploys what they test.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.deployment import Processes, start_federation, start_owner  # noqa: E402

OWNERS, PER_OWNER, TEST = 3, 600, 600
CLASSES = "0,1"


def round_seconds(metrics_path: Path) -> list[float]:
    """Seconds of rounds 1..N from the evaluation timestamps (round 0 = initial model)."""
    rounds = sorted(json.loads(metrics_path.read_text())["rounds"], key=lambda r: r["round"])
    times = [r["time"] for r in rounds]
    return [b - a for a, b in zip(times, times[1:], strict=False)]


def _events(path: Path) -> list[dict]:
    from datetime import datetime

    events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for event in events:
        event["t"] = datetime.fromisoformat(event["ts"]).timestamp()
    return events


def phases(server_audit: Path, owner_audits: list[Path]) -> dict[str, float]:
    """Median seconds per round (rounds 2..N) of each phase, from the audit logs' times:
    to owners (server samples -> last owner's ClientApp starts: push, Fleet poll, pull,
    task start), owner compute (the slowest owner's ClientApp), back (last update
    released -> server has every reply: SuperNode push, gateway, reply poll), server
    (replies in -> next round sampled: aggregate, evaluate, checkpoint, configure)."""
    server = _events(server_audit)
    owners = [_events(p) for p in owner_audits]

    def at(events, kind, rnd):
        return [
            e["t"] for e in events if e["type"] == kind and e["data"].get("server-round") == rnd
        ]

    rounds = sorted({e["data"]["server-round"] for e in server if e["type"] == "round-sampled"})
    rows: dict[str, list[float]] = {"to owners": [], "owner compute": [], "back": [], "server": []}
    for rnd in rounds[1:-1]:  # round 1 is start-up; the last has no next round to sample
        sampled = at(server, "round-sampled", rnd)[0]
        starts = [at(o, "round-start", rnd)[0] for o in owners]
        released = [at(o, "update-released", rnd)[0] for o in owners]
        received = min(at(server, "update-received", rnd))
        following = at(server, "round-sampled", rnd + 1)[0]
        rows["to owners"].append(max(starts) - sampled)
        rows["owner compute"].append(max(r - s for s, r in zip(starts, released, strict=True)))
        rows["back"].append(received - max(released))
        rows["server"].append(following - received)
    return {k: statistics.median(v) for k, v in rows.items() if v}


def make_data(directory: Path) -> None:
    frame = pd.read_csv(builtin_csv_path())
    frame = frame[frame["source"] == "imdb"].sample(n=OWNERS * PER_OWNER + TEST, random_state=7)
    frame = frame.reset_index(drop=True)[["text", "label"]]
    frame.iloc[:TEST].to_csv(directory / "eval.csv", index=False)
    frame.iloc[TEST:].to_csv(directory / "train.csv", index=False)  # simulation: 3 IID parts
    for i in range(OWNERS):
        start = TEST + PER_OWNER * i
        frame.iloc[start : start + PER_OWNER].to_csv(directory / f"owner-{i}.csv", index=False)


def simulate(work: Path, rounds: int) -> list[float]:
    from fedshield.simulation.engine import run_simulation

    config = RunConfig.from_dict(
        {
            "num-rounds": rounds,
            "data": str(work / "train.csv"),
            "eval-data": str(work / "eval.csv"),
            "classes": CLASSES,
            "partition": "iid",
            "min-train-nodes": OWNERS,
            "out-dir": str(work / "sim"),
            "transport": "simulation",
        }
    )
    run_simulation(config, OWNERS)
    return round_seconds(work / "sim" / "metrics.json")


def deploy(work: Path, rounds: int) -> list[float]:
    """The deployment tests' federation (tests/support/deployment.py) on ``work``'s data:
    its state in work/server, its run in work/run, owner-<i>'s ledger and audit log in
    work/owner-<i>."""
    pki = work / "pki"
    init_ca(pki)
    issue_server_certificate(pki, ["127.0.0.1"])
    for i in range(OWNERS):
        create_node_key(pki, f"owner-{i}")
    processes = Processes(work / "logs")
    try:
        # Owners start once their keys are registered: an unknown key is refused for good.
        served = start_federation(
            processes, pki, work, work, OWNERS, f"num-rounds={rounds}", f"min-train-nodes={OWNERS}"
        )
        for i in range(OWNERS):
            start_owner(processes, pki, work, served.port, f"owner-{i}", work / f"owner-{i}")
        if served.server.wait(timeout_s=1800) != 0:
            raise RuntimeError(served.server.log_text()[-3000:])
        return round_seconds(work / "run" / "metrics.json")
    finally:
        processes.stop_all()


def reported_settings(work: Path) -> dict[str, str]:
    """What the deployed processes said about their polling (their own log lines)."""
    owner_log = (work / "logs" / "owner-0.log").read_text(errors="replace")
    server_logs = "".join(
        p.read_text(errors="replace") for p in sorted(work.rglob("*.log")) if "owner" not in p.name
    )
    fleet = re.search(r"fedshield: (Fleet poll [^\n]*)", owner_log)
    grid = re.search(r"fedshield: (replies pulled every [^\n]*)", server_logs)
    return {
        "supernode": fleet.group(1).strip()
        if fleet
        else "flower-supernode as shipped: 3 s idle poll, 0.5 s reply check",
        "serverapp": grid.group(1).strip()
        if grid
        else "HttpGrid as shipped: replies pulled every 3 s",
        "gateway": "fedshield Fleet gateway (server/fleet_gateway.py)"
        if (work / "server" / "logs" / "gateway.log").exists()
        else "none found",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--label", default="", help="Name of this measurement in the JSON.")
    parser.add_argument("--keep", type=Path, help="Keep the work folder (logs) here.")
    args = parser.parse_args()
    if args.rounds < 3:
        parser.error("--rounds must be >= 3 (round 1 is start-up, the median needs rounds 2..N)")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        make_data(work)
        load_before = os.getloadavg()[0]
        sim = simulate(work, args.rounds)
        dep = deploy(work, args.rounds)
        settings = reported_settings(work)
        breakdown = {
            "simulation": phases(
                work / "sim" / "audit" / "server" / "audit.jsonl",
                [work / "sim" / "audit" / f"client-{i}" / "audit.jsonl" for i in range(OWNERS)],
            ),
            "deployment": phases(
                work / "run" / "audit" / "server" / "audit.jsonl",
                [work / f"owner-{i}" / "audit" / "audit.jsonl" for i in range(OWNERS)],
            ),
        }
    sim_median, dep_median = statistics.median(sim[1:]), statistics.median(dep[1:])
    ratio, excess = dep_median / sim_median, dep_median - sim_median
    met = ratio <= 1.5 or excess <= 1.0
    print(
        f"\n| setting | round 1 (s) | rounds 2-{args.rounds} median (s) | min-max (s) |\n"
        "| --- | --- | --- | --- |"
    )
    for name, values in (
        ("simulation (Ray)", sim),
        ("deployment (TLS + node auth + gateway)", dep),
    ):
        print(
            f"| {name} | {values[0]:.2f} | {statistics.median(values[1:]):.2f} | "
            f"{min(values[1:]):.2f}-{max(values[1:]):.2f} |"
        )
    print(
        f"\ndeployed / simulated: {ratio:.2f}x, +{excess:.2f} s per round "
        f"(target: <= 1.5x or <= +1 s: {'met' if met else 'NOT met'})"
    )
    names = list(breakdown["deployment"])
    print(f"\n| median s per round, rounds 2-{args.rounds - 1} | {' | '.join(names)} |")
    print("| --- |" + " --- |" * len(names))
    for where, values in breakdown.items():
        print(f"| {where} | " + " | ".join(f"{values.get(n, 0):.2f}" for n in names) + " |")
    print()
    for key, value in settings.items():
        print(f"- {key}: {value}")
    print(f"- load average (1 min) at start: {load_before:.2f} on {os.cpu_count()} CPUs")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "round_latency.json").write_text(
        json.dumps(
            {
                "label": args.label,
                "simulation_s": sim,
                "deployment_s": dep,
                "simulation_median_s": sim_median,
                "deployment_median_s": dep_median,
                "ratio": ratio,
                "excess_s": excess,
                "target_met": met,
                "settings": settings,
                "phases_median_s": breakdown,
                "rounds": args.rounds,
                "owners": OWNERS,
                "records_per_owner": PER_OWNER,
                "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs",
                "load_average_at_start": load_before,
                "date": time.strftime("%Y-%m-%d %H:%M"),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
