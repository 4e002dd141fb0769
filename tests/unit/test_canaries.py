"""Canaries of the empirical audit (audit/canaries.py): drawn fairly, written so that the
owners see only theirs, added to exactly their owner's data, and scored from updates
without the coins; with a privacy unit, canary units taken whole and scored as one."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord

from fedshield.audit.canaries import (
    OWN_WORDS_PER_UNIT_RECORD,
    WORDS_PER_CANARY,
    Canary,
    CanaryScorer,
    draw_canaries,
    write_canaries,
)
from fedshield.common.config import RunConfig
from fedshield.common.errors import ConfigError
from fedshield.common.featurize import featurize
from fedshield.common.model import ModelSpec
from fedshield.common.simulation_split import simulated_owner_data
from fedshield.simulation.empirical import prepare

CLASSES = ("neg", "pos", "neutral")


def test_canaries_are_dealt_evenly_with_fair_coins_and_random_labels():
    canaries = draw_canaries(3000, 4, CLASSES, seed=1)
    assert [sum(c.owner == k for c in canaries) for k in range(4)] == [750] * 4
    assert 1400 < sum(c.included for c in canaries) < 1600
    assert {c.label for c in canaries} == set(CLASSES)
    assert all(len(c.texts) == 1 for c in canaries)  # one record each, without units
    assert len({c.texts for c in canaries}) == 3000  # no two alike
    assert all(len(c.texts[0].split()) == 20 for c in canaries)
    # Unseeded draws come from the OS: two audits never share coins.
    first, second = draw_canaries(200, 2, CLASSES), draw_canaries(200, 2, CLASSES)
    assert [c.texts for c in first] != [c.texts for c in second]


@pytest.mark.parametrize("total,owners", [(1, 1), (10, 0)])
def test_impossible_canary_counts_are_refused(total, owners):
    with pytest.raises(ValueError):
        draw_canaries(total, owners, CLASSES)


def test_each_simulated_owner_gets_exactly_its_included_canaries(tmp_path, owner_csv):
    canaries = draw_canaries(40, 2, ("0", "1"), seed=3)
    included = write_canaries(canaries, tmp_path / "canaries")
    owners_file = json.loads(included.read_text())
    assert "included" not in json.dumps(owners_file)  # no coins in what owners read
    record = json.loads((tmp_path / "canaries" / "canaries.json").read_text())["canaries"]
    assert [c["included"] for c in record] == [c.included for c in canaries]

    plain = RunConfig(data=str(owner_csv), partition="iid", test_fraction=0.2)
    config = replace(plain, audit_canaries=str(included))
    for owner in range(2):
        base = simulated_owner_data(plain, owner, 2)
        data = simulated_owner_data(config, owner, 2)
        mine = [c for c in canaries if c.owner == owner and c.included]
        assert data.texts == base.texts + [c.texts[0] for c in mine]
        assert [data.classes[i] for i in data.labels[len(base) :]] == [c.label for c in mine]
        assert data.fingerprint != base.fingerprint


@pytest.mark.parametrize(
    "content,message",
    [
        ({"owners": {"0": [{"text": "x", "label": "1"}]}}, "fedshield-canaries/1"),
        ({"format": "fedshield-canaries/1", "owners": {"-1": []}}, "owner numbers"),
        (
            {"format": "fedshield-canaries/1", "owners": {"0": [{"text": 5, "label": "1"}]}},
            "records",
        ),
        ({"format": "fedshield-canaries/1", "owners": {"0": [{"text": "x"}]}}, "records"),
        ({"format": "fedshield-canaries/1"}, "owners"),
    ],
)
def test_a_malformed_canary_file_is_refused(tmp_path, owner_csv, content, message):
    bogus = tmp_path / "included.json"
    bogus.write_text(json.dumps(content))
    config = RunConfig(data=str(owner_csv), partition="iid", audit_canaries=str(bogus))
    with pytest.raises(ConfigError, match=message):
        simulated_owner_data(config, 0, 2)


def test_scores_follow_updates_of_the_canarys_own_owner_only():
    canaries = draw_canaries(8, 2, ("neg", "pos"), seed=5)
    spec = ModelSpec()
    scorer = CanaryScorer(spec, ("neg", "pos"), canaries)
    model = spec.build(2)
    before = ArrayRecord(model.state_dict())
    # An "update" that fits owner 0's canaries (their features toward their labels).
    mine = [c for c in canaries if c.owner == 0]
    x = torch.from_numpy(featurize([c.texts[0] for c in mine]))
    target = torch.tensor([0 if c.label == "neg" else 1 for c in mine])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    weight = state["weight"]
    for row, label in zip(x, target, strict=True):
        weight[label] += 5 * row
        weight[1 - label] -= 5 * row
    after = ArrayRecord(state)
    scorer.observe(1, "node-5", "client-0", before, after)
    scorer.observe(1, "node-77", "node 77", before, after)  # not a simulated owner: ignored
    zero = np.array([c.owner == 1 for c in canaries])
    assert scorer.updates_seen == 1
    raw_drop, raw_fit = scorer.loss_drop, scorer.fit
    assert np.all(raw_drop[~zero] > 0) and np.all(raw_drop[zero] == 0)
    # Fitted: better than chance (-log 2); never observed: no score at all.
    assert np.all(raw_fit[~zero] > -np.log(2)) and np.all(raw_fit[zero] == 0)
    # The scores guessed from are centred within each (owner, label) cell.
    scores = scorer.scores()
    for owner in (0, 1):
        for label in ("neg", "pos"):
            cell = [i for i, c in enumerate(canaries) if (c.owner, c.label) == (owner, label)]
            if cell:
                assert np.median(scores["fit"][cell]) == pytest.approx(0.0, abs=1e-12)
                assert np.allclose(scores["fit"][cell] - raw_fit[cell], -np.median(raw_fit[cell]))


def test_a_canary_unit_is_records_that_share_their_words_label_and_coin():
    canaries = draw_canaries(40, 2, CLASSES, seed=2, records_per_canary=5)
    for canary in canaries:
        words = [text.split() for text in canary.texts]
        assert len(set(canary.texts)) == 5  # five records, no two alike
        assert all(len(w) == WORDS_PER_CANARY + OWN_WORDS_PER_UNIT_RECORD for w in words)
        assert all(w[:WORDS_PER_CANARY] == words[0][:WORDS_PER_CANARY] for w in words)
    shared = [c.texts[0].split()[:WORDS_PER_CANARY] for c in canaries]
    assert len({tuple(w) for w in shared}) == 40


def test_each_owner_takes_an_included_canary_unit_whole_as_a_unit_of_its_own(tmp_path, imdb_frame):
    path = tmp_path / "reviews.csv"
    imdb_frame.assign(author=[f"a{row // 3}" for row in range(len(imdb_frame))]).to_csv(
        path, index=False
    )
    canaries = draw_canaries(20, 2, ("0", "1"), seed=4, records_per_canary=4)
    plain = RunConfig(data=str(path), partition="iid", privacy_unit="author")
    config = replace(plain, audit_canaries=str(write_canaries(canaries, tmp_path / "c")))
    for owner in range(2):
        base = simulated_owner_data(plain, owner, 2)
        data = simulated_owner_data(config, owner, 2)
        mine = [c for c in canaries if c.owner == owner and c.included]
        assert data.texts == base.texts + [text for c in mine for text in c.texts]
        assert np.array_equal(data.units[: len(base)], base.units)
        added = data.units[len(base) :]
        # One new unit per included canary, its four records together.
        assert data.unit_count == base.unit_count + len(mine)
        assert np.array_equal(added, base.unit_count + np.repeat(np.arange(len(mine)), 4))


def test_a_canary_units_score_is_the_sum_of_its_records_scores():
    units = draw_canaries(8, 2, ("neg", "pos"), seed=6, records_per_canary=3)
    records = [Canary(c.owner, (t,), c.label, c.included) for c in units for t in c.texts]
    spec = ModelSpec()
    by_unit = CanaryScorer(spec, ("neg", "pos"), units)
    by_record = CanaryScorer(spec, ("neg", "pos"), records)
    model = spec.build(2)
    before = ArrayRecord(model.state_dict())
    state = {k: v + 0.05 * torch.randn_like(v) for k, v in model.state_dict().items()}
    for owner in (0, 1):
        for scorer in (by_unit, by_record):
            scorer.observe(1, "node", f"client-{owner}", before, ArrayRecord(state))
    assert by_unit.updates_seen == 2
    for score in ("loss_drop", "fit"):
        summed = getattr(by_record, score).reshape(8, 3).sum(axis=1)
        assert np.allclose(getattr(by_unit, score), summed, rtol=1e-9, atol=1e-12)


def test_canary_units_need_a_privacy_unit(tmp_path, owner_csv):
    config = RunConfig(data=str(owner_csv), out_dir=str(tmp_path / "run"))
    with pytest.raises(ConfigError, match="--privacy-unit"):
        prepare(config, 2, 200, 0.95, records_per_canary=5)
    with pytest.raises(ConfigError, match="--records-per-canary 65"):
        prepare(replace(config, privacy_unit="author"), 2, 200, 0.95, records_per_canary=65)
