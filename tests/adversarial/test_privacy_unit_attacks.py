"""A hostile server against an owner that protects a privacy unit (issue 25): attacks
on the unit guarantee that fail, played against the real ClientApp (or the training
loop and the accountant it charges), each asserting what the server sees, what the
ledger charged, or what a unit can move.

- one record more or less in a multi-record unit, a unit grown by a record, a row
  without a unit: nothing outside the DP releases changes, under hostile plans too;
- no plan (physical batch 1, passes cut at or around a unit's size, the cap below a
  unit's size, momentum, bias) makes one unit move a step by more than C; passes never
  split a unit;
- the group-privacy figure is never below the epsilon of a real attack on k records;
- a ledger cannot be made to mix units or relations, the plan cannot set the unit, the
  count of units is charged once, a re-sent round re-releases without a new charge.
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import binom

from fedshield.client.ledger import PrivacyLedger
from fedshield.client.secure_random import SecureRandom
from fedshield.client.train import TrainSettings, train_locally
from fedshield.client.units import UnitMembers
from fedshield.common import wire
from fedshield.common.dp_event import DpEvent
from fedshield.common.group_privacy import _group_conversion, group_epsilon
from fedshield.common.model import build_model
from fedshield.common.privacy import epsilon_gaussian_exact, epsilon_spent
from tests.support.adjacency import observable
from tests.support.client_app import (
    PLAN,
    client_app,
    evaluate_message,
    owner_context,
    run_train,
    train_message,
)

pytestmark = pytest.mark.usefixtures("flower_task_identity")
UNIT = {"privacy-unit": "person"}


CPU = torch.device("cpu")
DIM, CLASSES = 16, 3


def data(sizes=(50, *range(1, 12)), seed=0):
    """12 units, one of 50 records (unit 0), the others of 1 to 11, scattered."""
    rng = np.random.default_rng(seed)
    units = np.repeat(np.arange(len(sizes)), sizes)
    rng.shuffle(units)
    labels = rng.integers(0, CLASSES, size=len(units))
    features = (rng.normal(size=(len(units), DIM)) + labels[:, None]).astype(np.float32)
    return features, labels, units


def start_model() -> torch.nn.Module:
    model = build_model(DIM, CLASSES)
    with torch.no_grad():
        model.weight.copy_(
            torch.from_numpy(np.random.default_rng(1).normal(0, 0.3, (CLASSES, DIM)))
        )
    return model


@pytest.fixture(scope="module")
def people(imdb_frame) -> pd.DataFrame:
    """300 records of 1 to 5 per person; "p-big" holds 6."""
    frame = imdb_frame.iloc[:300].copy()
    frame["label"] = frame["label"].astype(str)
    sizes = np.random.default_rng(1).integers(1, 6, size=300)
    frame["person"] = np.repeat([f"p{i}" for i in range(300)], sizes)[:300]
    frame.loc[10:15, "person"] = "p-big"
    return frame


def _context(frame: pd.DataFrame, root, **policy):
    root.mkdir(parents=True, exist_ok=True)
    path = root / "owner.csv"
    frame.to_csv(path, index=False)
    context = owner_context(path, root / "ledgers")
    context.node_config.update({**UNIT, **policy})
    return context


@pytest.mark.usefixtures("fixed_count_release")
def test_a_record_more_or_less_in_a_persons_records_shows_the_server_nothing(people, tmp_path):
    neighbours = {
        "D": people,
        "D minus one record of the largest unit": people.drop(index=12),
        "D with the largest unit grown by a record": people.assign(
            person=people["person"].where(people.index != 30, "p-big")
        ),
        "D plus a row without a unit": pd.concat(
            [people, pd.DataFrame({"text": ["a b c"], "label": ["1"], "person": [" "]})]
        ),
    }
    hostile = {
        "physical 1, batch 4, 3 epochs, momentum": PLAN.replace(
            physical_batch_size=1, batch_size=4, local_epochs=3, momentum=0.9, num_rounds=1
        ),
        "full batch, physical 5 (inside the largest unit)": PLAN.replace(
            batch_size=0, physical_batch_size=5
        ),
        "over the released count": PLAN.replace(batch_size=5000),
    }
    seen = {}
    for i, (name, frame) in enumerate(neighbours.items()):
        replies = {
            plan: run_train(_context(frame, tmp_path / f"{i}-{j}"), train_message(config))
            for j, (plan, config) in enumerate(hostile.items())
        }
        replies["evaluate with consent"] = client_app()(
            evaluate_message(), _context(frame, tmp_path / f"{i}-e", **{"allow-evaluate": True})
        )
        seen[name] = {
            path: observable("evaluate" if path.startswith("evaluate") else "train", reply)
            for path, reply in replies.items()
        }
    baseline = seen["D"]
    assert "error" not in baseline["physical 1, batch 4, 3 epochs, momentum"]
    assert "error" not in baseline["full batch, physical 5 (inside the largest unit)"]
    assert baseline["over the released count"]["error"][0] == wire.ERROR_BAD_DATA_OR_CONFIG
    assert baseline["evaluate with consent"]["error"][0] == wire.ERROR_POLICY
    for name, observed in seen.items():
        assert observed == baseline, name


def _one_step(x, y, units, **overrides) -> torch.Tensor:
    model = start_model()
    settings = TrainSettings(
        batch_size=0, learning_rate=1.0, noise_multiplier=0.0, max_grad_norm=0.5, **overrides
    )
    train_locally(model, (x,), y, settings, CPU, released_count=12, units=units)
    module = getattr(model, "_module", model)
    return torch.cat([module.weight.detach().flatten(), module.bias.detach().flatten()])


@pytest.mark.parametrize(
    "physical,cap,train_bias,momentum",
    [
        *itertools.product([1, 49, 50, 51], [11, 64], [False], [0.9]),
        (3, 64, True, 0.0),
        (7, 20, True, 0.9),
    ],
)
def test_no_plan_makes_a_unit_move_a_step_by_more_than_c(physical, cap, train_bias, momentum):
    """D against D minus the 50-record unit (cap at or above every other unit, so the
    other units train the same records): the step moves by at most C, whatever passes the
    plan cuts, with the cap cutting the unit, the bias trained or momentum on."""
    x, y, units = data()
    keep = units != 0
    settings = dict(
        physical_batch_size=physical,
        max_records_per_unit=cap,
        train_bias=train_bias,
        momentum=momentum,
    )
    moved = (
        _one_step(x, y, units, **settings)
        - _one_step(x[keep], y[keep], units[keep] - 1, **settings)
    ) * 12
    assert 0.1 * 0.5 < moved.norm().item() <= 0.5 * (1 + 1e-5)


def test_passes_never_exceed_the_physical_batch_and_keep_units_apart_whatever_the_sizes():
    """A pass holds at most the physical batch (a unit larger than it is cut into passes
    of its own, carried until it is whole: client/units.py), and one unit per position."""
    rng = np.random.default_rng(7)
    for _ in range(300):
        sizes = rng.integers(1, 30, size=rng.integers(1, 30))
        codes = np.repeat(np.arange(len(sizes)), sizes)
        rng.shuffle(codes)
        cap, physical = int(rng.integers(1, 40)), int(rng.integers(1, 50))
        members = UnitMembers.draw(codes, cap, SecureRandom())
        sampled = np.flatnonzero(rng.random(len(sizes)) < rng.random())
        placed, open_unit = [], None
        for rows, positions, more in members.passes(torch.from_numpy(sampled), physical):
            pairs = set(zip(positions.tolist(), codes[rows.numpy()].tolist(), strict=True))
            # one position per unit and one unit per position: a unit is summed whole
            assert len({p for p, _ in pairs}) == len({u for _, u in pairs}) == len(pairs)
            assert len(rows) <= physical
            units_here = [u for _, u in pairs]
            if open_unit is not None or more:  # a cut unit's passes hold it alone
                assert units_here == [units_here[0] if open_unit is None else open_unit]
            if open_unit is None:
                placed.extend(units_here)
            open_unit = units_here[0] if more else None
        assert open_unit is None
        assert sorted(placed) == sampled.tolist()
        assert all(len(members.members[u]) == min(cap, sizes[u]) for u in sampled)


def _aligned_group_epsilon(sigma, q, steps, k, count_noise, delta) -> float:
    """Epsilon of one attack on k records with aligned gradients of norm C, Poisson
    sampled at q: a mixture of Gaussians (j of k sampled), a lower bound on the truth."""
    from dp_accounting.pld import privacy_loss_distribution as pld

    j = [float(i) for i in range(k + 1)]
    mixture = pld.from_mixture_gaussian_mechanism(
        sigma, j, [binom.pmf(i, k, q) for i in range(k + 1)], value_discretization_interval=1e-3
    ).self_compose(steps)
    count = pld.from_gaussian_mechanism(
        count_noise, sensitivity=k, value_discretization_interval=1e-3
    )
    return mixture.compose(count).get_epsilon_for_delta(delta)


def test_the_group_figure_is_never_below_the_epsilon_of_a_real_attack():
    delta = 1e-5
    warnings.simplefilter("ignore", UserWarning)
    events = [DpEvent(20.0, 1.0, 1), DpEvent(3.0, 0.2, 20)]
    truth = _aligned_group_epsilon(3.0, 0.2, 20, 2, 20.0, delta)
    assert group_epsilon(events, delta, 2) >= truth
    assert _group_conversion(events, delta, 2) >= truth
    # Full batch: bound (a) is exact, so the conversion (b) may never undercut it.
    for sigma, steps, k in itertools.product([0.7, 2.0, 8.0], [1, 50], [2, 6, 40]):
        full = [DpEvent(20.0, 1.0, 1), DpEvent(sigma, 1.0, steps)]
        exact = epsilon_gaussian_exact(
            [DpEvent(e.noise_multiplier / k, 1.0, e.steps) for e in full], delta
        )
        assert group_epsilon(full, delta, k) >= exact * (1 - 1e-9)
        assert _group_conversion(full, delta, k) >= exact * (1 - 1e-9)
    assert group_epsilon(events, delta, 1) == epsilon_spent(events, delta)


@pytest.mark.parametrize(
    "then,code",
    [
        ({"privacy-unit": "patient"}, wire.ERROR_POLICY),  # the same people, renamed column
        ({"record-level": True}, wire.ERROR_POLICY),
        ({"privacy-unit": ""}, wire.ERROR_POLICY),
        # a public count of people is refused as a setting (common/config.py OwnerPrivacy)
        ({"public-record-count": True}, wire.ERROR_BAD_DATA_OR_CONFIG),
    ],
    ids=["column renamed", "record-level", "unit dropped", "count made public"],
)
def test_a_ledger_of_units_cannot_be_switched_to_another_unit_or_relation(
    people, tmp_path, then, code
):
    frame = people.assign(patient=people["person"])
    context = _context(frame, tmp_path)
    assert not run_train(context, train_message(PLAN)).has_error()
    charged = PrivacyLedger(tmp_path / "ledgers").entries()
    assert {e.unit for e in charged} == {"person"}
    switched = _context(frame, tmp_path, **then)
    reply = run_train(switched, train_message(PLAN, 2))
    assert reply.error.code == code
    assert PrivacyLedger(tmp_path / "ledgers").entries() == charged


@pytest.mark.parametrize(
    "key,value", [("privacy-unit", ""), ("record-level", True), ("public-record-count", True)]
)
def test_the_plan_cannot_set_the_owners_unit_policy(people, tmp_path, key, value):
    message = train_message(PLAN)
    message.content[wire.CONFIG][key] = value
    reply = run_train(_context(people, tmp_path), message)
    assert reply.error.code == wire.ERROR_BAD_DATA_OR_CONFIG
    assert PrivacyLedger(tmp_path / "ledgers").entries() == []


def test_the_count_of_units_is_charged_once_and_a_re_sent_round_costs_nothing(people, tmp_path):
    plan = PLAN.replace(run_key="run-a", num_rounds=3)
    context = _context(people, tmp_path)
    first = run_train(context, train_message(plan, 1))
    # The owner lowers its cap between rounds: the same data version, the same count.
    capped = _context(people, tmp_path, **{"max-records-per-unit": 1})
    assert not run_train(capped, train_message(plan, 2)).has_error()
    entries = PrivacyLedger(tmp_path / "ledgers").entries()
    assert [e.kind for e in entries] == ["count", "train", "train"]
    # The server re-sends round 1 (even after the owner turned record-level on): the
    # very update already released, nothing charged.
    again = run_train(_context(people, tmp_path, **{"record-level": True}), train_message(plan, 1))
    assert not again.has_error()
    assert wire.arrays_digest(again.content[wire.ARRAYS]) == wire.arrays_digest(
        first.content[wire.ARRAYS]
    )
    assert PrivacyLedger(tmp_path / "ledgers").entries() == entries
