"""A privacy unit at a real ClientApp (issue 25): D' = D minus one whole unit shows the
server nothing new, the count that leaves counts units, the ledger keeps one unit, and a
record-level owner on data with units is warned with its group-privacy figure."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from fedshield.client.ledger import PrivacyLedger
from fedshield.common import wire
from fedshield.common.data import load_dataset
from fedshield.common.errors import DataError
from fedshield.common.group_privacy import group_epsilon
from fedshield.common.splits import partition
from tests.support.adjacency import observable, paths
from tests.support.client_app import PLAN, owner_context, run_train, train_message

pytestmark = pytest.mark.usefixtures("flower_task_identity")
UNIT = {"privacy-unit": "person"}


@pytest.fixture(scope="module")
def unit_data(imdb_frame) -> pd.DataFrame:
    """600 records of 1 to 6 per person; "p-big" holds 6, "p-rare" the only 2 records of
    the label "rare"."""
    data = imdb_frame.copy()
    data["label"] = data["label"].astype(str)
    sizes = np.random.default_rng(0).integers(1, 6, size=600)
    people = np.repeat([f"p{i}" for i in range(600)], sizes)[:600]
    data["person"] = people
    data.loc[10:15, "person"] = "p-big"
    data.loc[[20, 21], "person"] = "p-rare"
    data.loc[[20, 21], "label"] = "rare"
    return data


def _audit(root, kind: str) -> list[dict]:
    lines = (root / "audit" / "audit.jsonl").read_text().splitlines()
    return [e["data"] for e in map(json.loads, lines) if e["type"] == kind]


@pytest.mark.usefixtures("fixed_count_release")
def test_removing_a_whole_unit_changes_nothing_outside_the_dp_releases(unit_data, tmp_path):
    neighbours = {
        "D": unit_data,
        "D minus a person of 6 records": unit_data[unit_data["person"] != "p-big"],
        "D minus the only person of a label": unit_data[unit_data["person"] != "p-rare"],
    }
    seen = {
        name: {
            p: observable(kind, r)
            for p, (kind, r) in paths(data, tmp_path / str(i), **UNIT).items()
        }
        for i, (name, data) in enumerate(neighbours.items())
    }
    baseline = seen["D"]
    codes = {p: v.get("error", (None,))[0] for p, v in baseline.items()}
    assert codes["train"] is None and codes["train, full batch"] is None
    # An evaluate answer is DP per record: refused for an owner protecting units.
    assert codes["evaluate with consent"] == wire.ERROR_POLICY
    assert codes["refused: budget"] == wire.ERROR_BUDGET_EXCEEDED
    for name, observed in seen.items():
        for path, fields in observed.items():
            assert fields == baseline[path], (name, path)


def test_the_count_that_leaves_counts_units_and_the_ledger_names_them(
    unit_data, tmp_path, monkeypatch
):
    from fedshield.client import count

    monkeypatch.setattr(count, "noisy_count", lambda exact, std: exact)  # to read it back
    path = tmp_path / "owner.csv"
    unit_data.to_csv(path, index=False)
    context = owner_context(path, tmp_path / "ledgers")
    context.node_config.update(UNIT)
    reply = run_train(context, train_message(PLAN.replace(batch_size=16)))
    assert not reply.has_error()
    people = unit_data[unit_data["label"].isin(["0", "1"])]["person"].nunique()
    assert reply.content[wire.METRICS]["num-examples"] == people
    entries = PrivacyLedger(tmp_path / "ledgers").entries()
    assert [(e.kind, e.unit) for e in entries] == [("count", "person"), ("train", "person")]
    assert entries[0].released == people
    # Units sampled at 16 / people, not records at 16 / 598.
    assert reply.content[wire.METRICS]["sample-rate"] == pytest.approx(1 / np.ceil(people / 16))
    (start,) = _audit(tmp_path, "round-start")
    assert start["privacy-unit"] == "person" and start["units"] == people
    assert {e["privacy-unit"] for e in _audit(tmp_path, "dp-charged")} == {"person"}


@pytest.mark.parametrize("first,then", [({}, UNIT), (UNIT, {})])
def test_a_ledger_keeps_the_privacy_unit_of_its_first_charge(unit_data, tmp_path, first, then):
    path = tmp_path / "owner.csv"
    unit_data.to_csv(path, index=False)
    context = owner_context(path, tmp_path / "ledgers")
    context.node_config.update(first)
    assert not run_train(context, train_message(PLAN)).has_error()
    charged = PrivacyLedger(tmp_path / "ledgers").entries()
    other = owner_context(path, tmp_path / "ledgers")
    other.node_config.update(then)
    reply = run_train(other, train_message(PLAN, 2))
    assert reply.error.code == wire.ERROR_POLICY
    assert PrivacyLedger(tmp_path / "ledgers").entries() == charged  # nothing charged
    (refused,) = _audit(tmp_path, "round-refused")
    assert "a ledger keeps one privacy unit" in refused["reason"]


def test_record_level_on_data_with_units_warns_with_the_group_figure(unit_data, tmp_path):
    path = tmp_path / "owner.csv"
    unit_data.to_csv(path, index=False)
    context = owner_context(path, tmp_path / "ledgers")
    context.node_config.update({**UNIT, "record-level": True})
    reply = run_train(context, train_message(PLAN.replace(batch_size=0)))
    assert not reply.has_error()
    entries = PrivacyLedger(tmp_path / "ledgers").entries()
    assert {e.unit for e in entries} == {"record"}
    (warning,) = _audit(tmp_path, "group-privacy-warning")
    largest = int(unit_data[unit_data["label"].isin(["0", "1"])]["person"].value_counts().max())
    assert warning["largest-unit-records"] == largest >= 6
    events = [e.event for e in entries]
    assert warning["epsilon-for-largest-unit"] == pytest.approx(
        group_epsilon(events, 1e-5, largest)
    )
    # Full batch: k records are a Gaussian of sensitivity k C, far above k = 1.
    assert warning["epsilon-for-largest-unit"] > 3 * warning["epsilon-per-record"]
    assert "warning" not in json.dumps(dict(reply.content[wire.METRICS]))


def test_a_plan_cannot_set_how_many_records_of_a_unit_train(unit_data, tmp_path):
    path = tmp_path / "owner.csv"
    unit_data.to_csv(path, index=False)
    context = owner_context(path, tmp_path / "ledgers")
    context.node_config.update(UNIT)
    message = train_message(PLAN)
    message.content[wire.CONFIG]["max-records-per-unit"] = 10_000
    assert run_train(context, message).has_error()
    assert PrivacyLedger(tmp_path / "ledgers").entries() == []


def test_units_are_read_checked_and_keep_their_own_data_version(unit_data, tmp_path):
    path = tmp_path / "owner.csv"
    unit_data.to_csv(path, index=False)
    records = load_dataset(path)
    units = load_dataset(path, unit_column="person")
    assert units.units is not None and records.units is None
    assert units.unit_count == unit_data["person"].nunique() and units.largest_unit >= 6
    assert units.fingerprint != records.fingerprint  # a count of units is its own release
    blank = unit_data.copy()
    blank.loc[30, "person"] = " "
    blank.to_csv(path, index=False)
    with pytest.raises(DataError, match="row 31, column 'person': missing privacy unit"):
        load_dataset(path, unit_column="person")
    kept = load_dataset(
        path, unit_column="person", classes=("0", "1", "rare"), usable_rows_only=True
    )
    assert len(kept) == 599 and kept.left_out == 1
    with pytest.raises(DataError, match="privacy-unit column 'patient' not found"):
        load_dataset(path, unit_column="patient")
    with pytest.raises(DataError, match="has no privacy-unit column"):
        load_dataset("imdb", unit_column="person")


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_simulated_owners_get_whole_units(unit_data, tmp_path, scheme):
    path = tmp_path / "owner.csv"
    unit_data.to_csv(path, index=False)
    dataset = load_dataset(path, unit_column="person")
    parts = partition(dataset, 4, scheme, alpha=0.5, seed=0)
    assert sum(len(p) for p in parts) == len(dataset)
    # A person split between two owners would count once in each.
    assert sum(p.unit_count for p in parts) == dataset.unit_count
    assert all(p.unit_name == "person" for p in parts)


def test_numeric_ids_too_large_for_a_float_are_not_merged(tmp_path):
    """JSON with a null in the unit column reads ids as floats: two 17-digit ids would
    become one person. They are refused at the owner's check, never merged."""
    path = tmp_path / "owner.jsonl"
    rows = [
        {"text": "a note", "label": "0", "person": 12345678901234567},
        {"text": "b note", "label": "1", "person": 12345678901234568},
        {"text": "c note", "label": "1", "person": None},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match="row 1, column 'person'.*too large to read exactly"):
        load_dataset(path, unit_column="person")
    kept = load_dataset(path, unit_column="person", classes=("0", "1"), usable_rows_only=True)
    assert len(kept) == 0 and kept.left_out == 3


def test_a_public_count_of_people_is_refused_with_the_fix():
    from fedshield.common.config import OwnerConfig
    from fedshield.common.errors import ConfigError

    settings = {"data-path": "x.csv", "epsilon-budget": 3.0, "privacy-unit": "person"}
    with pytest.raises(ConfigError, match="number of units"):
        OwnerConfig.from_dict({**settings, "public-record-count": True})
    OwnerConfig.from_dict({**settings, "public-record-count": True, "record-level": True})


def test_a_non_private_round_on_unit_data_reports_its_records(unit_data, tmp_path):
    path = tmp_path / "owner.csv"
    unit_data.to_csv(path, index=False)
    context = owner_context(path, tmp_path / "ledgers")
    context.node_config.update({**UNIT, "allow-no-dp": True})
    reply = run_train(context, train_message(PLAN.replace(dp=False, batch_size=0)))
    assert not reply.has_error()
    usable = int(unit_data["label"].isin(["0", "1"]).sum())
    assert reply.content[wire.METRICS]["num-examples"] == usable  # trained per record


def test_the_held_out_split_takes_whole_units(unit_data, tmp_path):
    from fedshield.common.splits import split_holdout

    path = tmp_path / "owner.csv"
    unit_data.to_csv(path, index=False)
    dataset = load_dataset(path, unit_column="person")
    train, test = split_holdout(dataset, 0.2, seed=0)
    assert len(train) + len(test) == len(dataset)
    assert 0.15 < len(test) / len(dataset) < 0.25
    assert train.unit_count + test.unit_count == dataset.unit_count  # no person in both
