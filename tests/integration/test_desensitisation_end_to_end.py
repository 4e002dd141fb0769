"""Issue 23, done when: identifiers of every default type, planted in owners' data with a
marker word, appear in the clear nowhere fedshield writes at an owner or at the
operator, nor in what leaves an owner, in a simulation and in a loopback deployment with
the default policy; and the model's predictions do not change when the identifiers do.

The marker is no identifier: it stays in the desensitised text, so finding it in the
sealed caches once they are decrypted with the owner's keys (and nowhere in the clear)
shows that the scan reads text where text is kept, and that the caches are sealed.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from fedshield.audit.verify import verify_log
from fedshield.common import wire
from fedshield.common.desensitise_policy import DEFAULT_TYPES
from fedshield.common.owner_keys import open_owner_keys
from fedshield.common.sealed import DESENSITISED_TEXT, read_sealed
from tests.support.cli import FEDSHIELD
from tests.support.deployment import start_federation, start_owner
from tests.support.planted import (
    IDENTIFIERS,
    every_value,
    files_under,
    found_in,
    planted_frame,
    planted_text,
)
from tests.support.simulation import simulate

pytestmark = pytest.mark.slow

MARKER = "zqxmarkerword"
VALUES = list(every_value())
PLANTED_ROWS = 240  # of 360 reviews; the last 40 carry the marker


def imdb_reviews(n: int, seed: int) -> pd.DataFrame:
    from fedshield.common.data import builtin_csv_path

    frame = pd.read_csv(builtin_csv_path())
    frame = frame[frame["source"] == "imdb"].sample(n=n, random_state=seed)
    return frame.reset_index(drop=True)[["text", "label"]]


def clear_text_hits(*roots: Path) -> tuple[list[str], list[str]]:
    """(planted identifiers found, marker found) in every file under ``roots``."""
    files = files_under(*roots)
    assert files, roots
    return found_in(files, VALUES), found_in(files, [MARKER])


def decrypted_caches(cache_dir: Path, key_dir: Path) -> list[str]:
    """The texts of every sealed desensitised-text cache in ``cache_dir``, decrypted."""
    keys = open_owner_keys(key_dir, create=False)
    sealed = sorted(cache_dir.glob("desensitised-*.sealed"))
    assert sealed, f"no desensitised-text cache in {cache_dir}"
    return [
        text
        for path in sealed
        for text in json.loads(read_sealed(path, keys, DESENSITISED_TEXT))["texts"]
    ]


def assert_desensitised_and_readable(texts: list[str]) -> None:
    """The decrypted caches: the marker there (the positive control), no identifier."""
    joined = "\n".join(texts)
    assert MARKER in joined
    assert [v for v in VALUES if v in joined] == []
    assert {t for t in DEFAULT_TYPES if f"<{t}>" in joined} == set(DEFAULT_TYPES)


def counted_types(audit_log: Path) -> set[str]:
    """The entity types the owner's log says its policy replaced (text-desensitised
    entries), every round-start naming the policy."""
    log = verify_log(audit_log)
    assert log.ok, log.problem
    starts = [e["data"] for e in log.entries if e["type"] == "round-start"]
    assert starts and all(s["desensitisation"]["policy"]["entities"] for s in starts)
    replaced = [e["data"] for e in log.entries if e["type"] == "text-desensitised"]
    assert len(replaced) == len(starts)
    return {t for r in replaced for t, n in r["identifiers-replaced"].items() if n > 0}


def test_the_scan_finds_every_planted_value_where_it_is(tmp_path):
    """The scan's own control: every value, in the clear, inside a zip, JSON-escaped;
    and the planted values cover every type of the default policy."""
    import zipfile

    assert set(IDENTIFIERS) == set(DEFAULT_TYPES)
    assert all(len(values) >= 4 for values in IDENTIFIERS.values())
    frame = planted_frame(imdb_reviews(120, seed=5), 120, MARKER, 10)
    frame.to_csv(tmp_path / "planted.csv", index=False)
    assert len(found_in([tmp_path / "planted.csv"], VALUES)) == len(VALUES)
    with zipfile.ZipFile(tmp_path / "a.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("t.json", json.dumps({"t": frame["text"].tolist()}, ensure_ascii=True))
    (tmp_path / "b.json").write_text(json.dumps(VALUES).replace("/", "\\/").replace("@", "\\u0040"))
    for name in ("a.zip", "b.json"):
        assert len(found_in([tmp_path / name], VALUES)) == len(VALUES), name


def test_an_owners_reply_holds_no_planted_identifier(tmp_path, flower_task_identity):
    """The real ClientApp on planted data, in process: its reply, serialised as Flower
    sends it, and everything the round wrote at the owner."""
    from flwr.common.serde import message_to_proto

    from tests.support.client_app import owner_context, run_train

    planted_frame(imdb_reviews(200, seed=11), 180, MARKER, 20).to_csv(
        tmp_path / "owner.csv", index=False
    )
    home = tmp_path / "owner"
    context = owner_context(tmp_path / "owner.csv", home / "ledgers")
    context.node_config.update({"key-dir": str(home / "keys"), "cache-dir": str(home / "cache")})
    reply = run_train(context)
    assert not reply.has_error(), reply.error
    (tmp_path / "reply.bin").write_bytes(message_to_proto(reply).SerializeToString())
    identifiers, marker = clear_text_hits(tmp_path / "reply.bin", home)
    assert identifiers == [] and marker == []
    assert_desensitised_and_readable(decrypted_caches(home / "cache", home / "keys"))
    assert counted_types(home / "audit" / "audit.jsonl") == set(DEFAULT_TYPES)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """`fedshield simulate` on 360 reviews (240 with identifiers, 40 with the marker),
    then `fedshield audit report` and `fedshield predict` on the planted reviews, once as
    trained and once with other identifiers of the same types."""
    work = tmp_path_factory.mktemp("planted-simulation")
    reviews = imdb_reviews(360, seed=23)
    planted_frame(reviews, PLANTED_ROWS, MARKER, 40).to_csv(work / "owners.csv", index=False)
    texts = reviews["text"][:PLANTED_ROWS]
    to_predict = [planted_text(t, row) for row, t in enumerate(texts)] + [
        planted_text(t, row, shift=1) for row, t in enumerate(texts)
    ]
    pd.DataFrame({"text": to_predict}).to_csv(work / "planted.csv", index=False)
    out = work / "run"
    started = time.monotonic()
    proc = simulate(
        *("--data", str(work / "owners.csv"), "--clients", "2", "--rounds", "2"),
        *("--partition", "iid", "--epsilon", "3", "--out", str(out)),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = subprocess.run(
        [*FEDSHIELD, "audit", "report", str(out / "audit"), "--out", str(work / "report")],
        capture_output=True,
        text=True,
    )
    assert report.returncode == 0, report.stdout[-3000:] + report.stderr[-3000:]
    predict = subprocess.run(
        [
            *FEDSHIELD,
            *("predict", "--model", str(out), "--file", str(work / "planted.csv")),
            *("--out", str(work / "preds.csv"), "--key-dir", str(out / "keys")),
        ],
        capture_output=True,
        text=True,
    )
    assert predict.returncode == 0, predict.stdout[-3000:] + predict.stderr[-3000:]
    print(f"simulate + audit report + predict: {time.monotonic() - started:.1f} s")
    return work, out, [proc, report, predict]


def test_no_planted_identifier_in_anything_a_simulation_writes(simulated):
    work, out, commands = simulated
    # Everything under the run (caches, ledgers and releases, audit logs and keys,
    # checkpoint, model, metrics), the audit report and the predictions; and Ray's session
    # folder, where the owners' actors' output goes.
    roots = [out, work / "report", work / "preds.csv"]
    ray_dir = os.environ.get("RAY_TMPDIR")
    identifiers, marker = clear_text_hits(*roots, *([Path(ray_dir)] if ray_dir else []))
    assert identifiers == []
    assert marker == []
    consoles = "\n".join(text for c in commands for text in (c.stdout, c.stderr))
    assert [v for v in VALUES if v in consoles] == [] and MARKER not in consoles

    # Sealed, not absent: decrypted with the owners' keys, the caches hold the text
    # (each simulated owner's and the held-out evaluation slice), desensitised.
    assert_desensitised_and_readable(decrypted_caches(out / "cache", out / "keys"))
    owners = sorted((out / "audit").glob("client-*/audit.jsonl"))
    assert len(owners) == 2
    assert set().union(*(counted_types(log) for log in owners)) == set(DEFAULT_TYPES)

    report = json.loads((work / "report" / "report.json").read_text())
    (row,) = [
        r for r in report["requirements"] if r["name"] == "Data minimisation / desensitisation"
    ]
    assert row["status"] == "pass", row["evidence"]
    # It names the policy each owner's log records: the default's types, all tagged.
    start = next(e for e in verify_log(owners[0]).entries if e["type"] == "round-start")
    digest = start["data"]["desensitisation"]["policy"]["digest"]
    assert f"{len(DEFAULT_TYPES)} types (tag x{len(DEFAULT_TYPES)})" in row["evidence"]
    assert f"digest {digest[:12]}" in row["evidence"]


def test_predictions_do_not_change_when_the_identifiers_do(simulated):
    from fedshield.inference.predict import load_model

    work, out, _ = simulated
    preds = pd.read_csv(work / "preds.csv")
    planted = pd.read_csv(work / "planted.csv")["text"]
    as_trained, other_people = preds.iloc[:PLANTED_ROWS], preds.iloc[PLANTED_ROWS:]
    assert (planted[:PLANTED_ROWS].values != planted[PLANTED_ROWS:].values).all()
    # The model read the same desensitised text, and gave the same probabilities.
    assert as_trained["text"].tolist() == other_people["text"].tolist()
    columns = [c for c in preds.columns if c.startswith("prob-")]
    assert len(columns) == 2
    assert (as_trained[columns].values == other_people[columns].values).all()
    # The control: without desensitisation, the identifiers move the probabilities.
    model = load_model(out, "cpu")
    raw_a = model.probabilities(planted[:PLANTED_ROWS].tolist())
    raw_b = model.probabilities(planted[PLANTED_ROWS:].tolist())
    assert (raw_a != raw_b).any(axis=1).sum() > PLANTED_ROWS // 2


def test_no_planted_identifier_leaves_a_deployed_owner_or_rests_in_the_clear(
    pki, tmp_path, processes
):
    """A TLS SuperLink and two owners on 127.0.0.1, default policy; then every file of
    the owners (ledgers, releases, audit logs, caches, keys), of the operator (run
    outputs, evaluation cache, audit log, the SuperLink's state database, through which
    every reply passes) and every process's console log is scanned."""
    data = tmp_path / "data"
    data.mkdir()
    reviews = imdb_reviews(480, seed=31)
    for name, part in (
        ("eval", reviews.iloc[:120]),
        ("owner-0", reviews.iloc[120:300]),
        ("owner-1", reviews.iloc[300:480]),
    ):
        planted_frame(part, 150 if name != "eval" else 100, MARKER, 20).to_csv(
            data / f"{name}.csv", index=False
        )
    served = start_federation(processes, pki, data, tmp_path, 2, "num-rounds=1")
    homes = [tmp_path / f"owner-{i}" for i in range(2)]
    for i, home in enumerate(homes):
        extra = ("--key-dir", str(home / "keys"), "--cache-dir", str(home / "cache"))
        start_owner(processes, pki, data, served.port, f"owner-{i}", home, *extra)
    assert served.server.wait(timeout_s=300) == 0, served.server.log_text()[-4000:]
    processes.stop_all()  # logs and the SuperLink's database complete before the scan

    run, state = tmp_path / "run", served.state
    flwr_home = os.environ.get("FLWR_HOME")
    roots = [*homes, run, state, tmp_path / "logs", *([Path(flwr_home)] if flwr_home else [])]
    identifiers, marker = clear_text_hits(*roots)
    assert identifiers == []
    assert marker == []

    for home in homes:
        assert_desensitised_and_readable(decrypted_caches(home / "cache", home / "keys"))
    assert set().union(*(counted_types(h / "audit" / "audit.jsonl") for h in homes)) == set(
        DEFAULT_TYPES
    )
    # The operator's evaluation data is desensitised too, under the run's own keys.
    assert_desensitised_and_readable(decrypted_caches(run / "cache", run / "keys"))

    # What left the owners, as the server recorded it: the declared metrics only.
    server_log = verify_log(next((run / "audit").rglob("audit.jsonl")))
    assert server_log.ok, server_log.problem
    received = [e["data"] for e in server_log.entries if e["type"] == "update-received"]
    assert len(received) == 2
    for entry in received:
        assert set(entry["metrics"]) <= set(wire.REPLY_METRIC_KEYS), entry["metrics"]
    # The scan read replies where the SuperLink stored them (sqlite keeps a pulled
    # message's bytes in its write-ahead log): a reply's audit head is there.
    stored = b"".join(p.read_bytes() for p in files_under(state) if "superlink.db" in p.name)
    assert any(entry["owner-audit-head"].encode() in stored for entry in received)
