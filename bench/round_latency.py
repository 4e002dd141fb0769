"""Seconds per round: simulation (Ray, in-process messages) against deployment (real
flower-superlink + 3 flower-supernodes on 127.0.0.1, TLS + node authentication), on
the same work: 3 owners x 600 IMDB reviews, the same held-out 600, the same rounds.

    python bench/round_latency.py --rounds 5

Prints a Markdown table and writes bench/results/round_latency.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from fedshield.common.config import RunConfig
from fedshield.common.data import builtin_csv_path
from fedshield.common.pki import create_node_key, init_ca, issue_server_certificate
from fedshield.common.processes import ManagedProcess, flower_env, free_port

FEDSHIELD = [sys.executable, "-c", "from fedshield.cli.app import main; main()"]
OWNERS, PER_OWNER, TEST = 3, 600, 600


def round_seconds(metrics_path: Path) -> list[float]:
    rounds = json.loads(metrics_path.read_text())["rounds"]
    times = [r["time"] for r in rounds]
    return [b - a for a, b in zip(times, times[1:], strict=False)]


def make_data(directory: Path) -> None:
    frame = pd.read_csv(builtin_csv_path())
    frame = frame[frame["source"] == "imdb"].sample(n=OWNERS * PER_OWNER + TEST, random_state=7)
    frame = frame.reset_index(drop=True)[["text", "label"]]
    frame.to_csv(directory / "all.csv", index=False)  # simulation: split + partition this
    frame.iloc[:TEST].to_csv(directory / "eval.csv", index=False)
    for i in range(OWNERS):
        start = TEST + PER_OWNER * i
        frame.iloc[start : start + PER_OWNER].to_csv(directory / f"owner-{i}.csv", index=False)


def simulate(work: Path, rounds: int) -> list[float]:
    from fedshield.simulation.engine import run_simulation

    config = RunConfig.from_dict(
        {
            "num-rounds": rounds,
            "data": str(work / "all.csv"),
            "partition": "iid",
            "test-fraction": TEST / (TEST + OWNERS * PER_OWNER),
            "min-train-nodes": OWNERS,
            "out-dir": str(work / "sim"),
            "transport": "simulation",
        }
    )
    run_simulation(config, OWNERS)
    return round_seconds(work / "sim" / "metrics.json")


def deploy(work: Path, rounds: int) -> list[float]:
    pki = work / "pki"
    init_ca(pki)
    issue_server_certificate(pki, ["127.0.0.1"])
    port = free_port()
    started: list[ManagedProcess] = []
    try:
        keys = []
        for i in range(OWNERS):
            create_node_key(pki, f"owner-{i}")
            keys += ["--node-key", str(pki / f"owner-{i}.pub")]
        server = ManagedProcess(
            "server",
            [
                *FEDSHIELD,
                "server",
                "start",
                "--pki",
                str(pki),
                "--state",
                str(work / "state"),
                "--port",
                str(port),
                *keys,
                "--run-config",
                f"num-rounds={rounds}",
                "--run-config",
                f"data='{work / 'eval.csv'}'",
                "--run-config",
                "test-fraction=0.999",
                "--run-config",
                f"out-dir='{work / 'dep'}'",
            ],
            work / "logs" / "server.log",
            flower_env(),
        )
        started.append(server)
        while "waiting for" not in server.log_text():
            if not server.running:
                raise RuntimeError(server.log_text()[-2000:])
            time.sleep(0.5)
        for i in range(OWNERS):
            started.append(
                ManagedProcess(
                    f"owner-{i}",
                    [
                        *FEDSHIELD,
                        "client",
                        "start",
                        "--superlink",
                        f"127.0.0.1:{port}",
                        "--ca",
                        str(pki / "ca.crt"),
                        "--auth-key",
                        str(pki / f"owner-{i}.key"),
                        "--data",
                        str(work / f"owner-{i}.csv"),
                        "--epsilon-budget",
                        "10",
                        "--ledger-dir",
                        str(work / f"owner-{i}" / "ledger"),
                        "--audit-dir",
                        str(work / f"owner-{i}" / "audit"),
                        "--owner-id",
                        f"owner-{i}",
                        "--port",
                        str(free_port()),
                        "--max-retries",
                        "3",
                    ],
                    work / "logs" / f"owner-{i}.log",
                    flower_env(),
                )
            )
        if server.wait(timeout_s=1800) != 0:
            raise RuntimeError(server.log_text()[-2000:])
        return round_seconds(work / "dep" / "metrics.json")
    finally:
        for process in reversed(started):
            process.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_data(work)
        sim = simulate(work, args.rounds)
        dep = deploy(work, args.rounds)
    # Round 1 pays for start-up (Ray actors, first process); report it apart.
    rows = {
        "simulation": sim,
        "deployment (TLS + node auth)": dep,
    }
    print(f"| setting | round 1 (s) | rounds 2-{args.rounds} mean (s) | all rounds mean (s) |")
    print("| --- | --- | --- | --- |")
    for name, values in rows.items():
        print(
            f"| {name} | {values[0]:.2f} | {statistics.mean(values[1:]):.2f} | {statistics.mean(values):.2f} |"
        )
    ratio = statistics.mean(dep[1:]) / statistics.mean(sim[1:])
    print(f"\nsteady-state ratio deployment / simulation: {ratio:.2f} (target <= 1.5)")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "round_latency.json").write_text(
        json.dumps(
            {
                "simulation_s": sim,
                "deployment_s": dep,
                "ratio_steady": ratio,
                "rounds": args.rounds,
                "machine": f"{platform.node()} {platform.machine()} {platform.processor()}",
                "date": time.strftime("%Y-%m-%d %H:%M"),
                "owners": OWNERS,
                "records_per_owner": PER_OWNER,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
