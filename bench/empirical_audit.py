"""The empirical lower bound on epsilon against the claim, on IMDB: one
`fedshield audit empirical` run per setting (the product's command, defaults otherwise),
then a table.

    python bench/empirical_audit.py                      # epsilon 1, 3, 8 and no DP
    python bench/empirical_audit.py --settings 3 --repeats 3 --canaries 2000

Each row is one real simulation (Flower Simulation Engine, the owners' ClientApp).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tables import print_table, write_json  # bench/tables.py

FEDSHIELD = [sys.executable, "-c", "from fedshield.cli.app import main; main()"]


def run(setting: str, canaries: int, out: Path, extra: list[str]) -> tuple[dict, float]:
    privacy = ["--no-dp"] if setting == "none" else ["--epsilon", setting]
    start = time.time()
    proc = subprocess.run(
        [*FEDSHIELD, "audit", "empirical", "--canaries", str(canaries), "--out", str(out)]
        + privacy
        + extra,
        capture_output=True,
        text=True,
    )
    seconds = time.time() - start
    result = out / "empirical.json"
    if not result.exists():
        raise SystemExit(
            f"setting {setting}: no result\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        )
    return json.loads(result.read_text()), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=["1", "3", "8", "none"])
    parser.add_argument("--canaries", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("extra", nargs="*", help="more `audit empirical` options, after --")
    args = parser.parse_args()
    rows = []
    root = Path(tempfile.mkdtemp(prefix="empirical-bench-"))
    try:
        for setting in args.settings:
            for repeat in range(args.repeats):
                summary, seconds = run(
                    setting, args.canaries, root / f"{setting}-{repeat}", args.extra
                )
                bound = summary["lower-bound"]
                rows.append(
                    {
                        "setting": setting,
                        "claimed": summary["claimed-epsilon"],
                        "recomputed": summary["recomputed-epsilon"],
                        "bound": bound["epsilon_lower_bound"],
                        "confidence": bound["confidence"],
                        "canaries": bound["canaries"],
                        "included": bound["included"],
                        "correct": f"{bound['correct']}/{bound['guesses']}",
                        "score": bound["score"],
                        "accuracy": summary["final-accuracy"],
                        "seconds": seconds,
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print()
    print_table(
        [
            "target epsilon",
            "claimed",
            "recomputed",
            "empirical lower bound",
            "confidence",
            "canaries (in)",
            "correct / guesses",
            "score",
            "accuracy",
            "wall s",
        ],
        [
            [
                r["setting"],
                "none (no DP)" if r["claimed"] is None else f"{r['claimed']:.3f}",
                "-" if r["recomputed"] is None else f"{r['recomputed']:.3f}",
                f"**{r['bound']:.3f}**",
                f"{r['confidence']:.0%}",
                f"{r['canaries']} ({r['included']})",
                r["correct"],
                r["score"],
                f"{r['accuracy']:.3f}",
                f"{r['seconds']:.0f}",
            ]
            for r in rows
        ],
    )
    write_json(args.json, rows, indent=1)


if __name__ == "__main__":
    main()
