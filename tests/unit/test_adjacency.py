"""The definition, checked: an owner on D and on D' (D minus one record; D minus the only
record of a label) sends identical fields, except the declared DP releases, through every
reply and refusal path of the real ClientApp.

Both owners draw the same count release (``fixed_count_release``): the count is itself a
DP release, and every setting that leaves (sample rate, steps, calibrated noise, epsilon,
refusals) must be a function of it, the plan and the owner's policy only. The update and
an evaluate answer are the DP releases (``wire.DP_RELEASE_FIELDS``); the audit head is a
commitment to the owner's own log (chained over times and a secret key, different on
every run), never compared.
"""

from __future__ import annotations

import pandas as pd
import pytest

from fedshield.client.ledger import PrivacyLedger
from fedshield.common import wire
from fedshield.common.dp_event import DpEvent
from tests.support.adjacency import observable, paths, with_classes
from tests.support.client_app import (
    PLAN,
    client_app,
    owner_context,
    run_train,
    train_message,
)

pytestmark = pytest.mark.usefixtures("flower_task_identity", "fixed_count_release")


@pytest.fixture(scope="module")
def owner_data(imdb_frame) -> pd.DataFrame:
    data = imdb_frame.copy()
    data["label"] = data["label"].astype(str)
    data.loc[7, "label"] = "rare"  # the only record of its label ("B20 HIV" in a clinic)
    return data


def test_every_field_outside_the_dp_releases_is_identical_on_adjacent_data(owner_data, tmp_path):
    neighbours = {
        "D": owner_data,
        "D minus one record": owner_data.drop(index=3),
        "D minus the only record of a label": owner_data.drop(index=7),
    }
    seen = {
        name: {
            p: observable(kind, reply)
            for p, (kind, reply) in paths(data, tmp_path / str(i)).items()
        }
        for i, (name, data) in enumerate(neighbours.items())
    }
    baseline = seen["D"]
    # Every path ran as intended on D: the refusals refused with their own codes.
    codes = {p: v.get("error", (None,))[0] for p, v in baseline.items()}
    assert codes == {
        "train": None,
        "train, full batch": None,
        "train, plan classes without the rare label": None,
        "train, plan classes with the rare label": None,
        "evaluate without consent": wire.ERROR_POLICY,
        "evaluate with consent": None,
        "refused: dp off": wire.ERROR_POLICY,
        "refused: budget": wire.ERROR_BUDGET_EXCEEDED,
        "refused: batch over the released count": wire.ERROR_BAD_DATA_OR_CONFIG,
        "refused: class list mismatch": wire.ERROR_POLICY,
        "refused: delta over 1/count": wire.ERROR_BAD_DATA_OR_CONFIG,
        "refused: run cap": wire.ERROR_BUDGET_EXCEEDED,
        "refused: budget exhausted": wire.ERROR_BUDGET_EXCEEDED,
        "refused: ledger corrupted": wire.ERROR_LEDGER_CORRUPTED,
    }
    assert baseline["train"]["metrics.num-examples"] == 600  # the fixed count release
    for name, observed in seen.items():
        for path, fields in observed.items():
            assert fields == baseline[path], (name, path)


def test_the_count_release_is_charged_once_per_data_version_and_composed(owner_csv, tmp_path):
    """The count costs one Gaussian (sensitivity 1) per data version, composed with the
    training events; rounds on the same data reuse the stored value."""
    context = owner_context(owner_csv, tmp_path / "ledgers")
    first = run_train(context, train_message(PLAN))
    second = run_train(context, train_message(PLAN, 2))
    assert not first.has_error() and not second.has_error()
    entries = PrivacyLedger(tmp_path / "ledgers").entries()
    assert [e.kind for e in entries] == ["count", "train", "train"]
    assert entries[0].event == DpEvent(20.0, 1.0, 1) and entries[0].released == 600
    assert first.content[wire.METRICS]["num-examples"] == 600
    assert second.content[wire.METRICS]["num-examples"] == 600


def _independent_pld(sigmas: list[float], relation, delta: float = 1e-5) -> float:
    """dp-accounting's PLD over full-batch Gaussians, with the relation named: an
    implementation apart from fedshield's (which composes accounted events)."""
    import dp_accounting
    from dp_accounting.pld import pld_privacy_accountant

    accountant = pld_privacy_accountant.PLDAccountant(
        neighboring_relation=relation, value_discretization_interval=1e-4
    )
    for sigma in sigmas:
        accountant.compose(dp_accounting.GaussianDpEvent(sigma))
    return float(accountant.get_epsilon(delta))


FULL_BATCH_FIXED = PLAN.replace(batch_size=0, noise_multiplier=8.798, target_epsilon=0.0)


def test_the_owners_epsilon_with_its_count_matches_an_independent_pld(owner_csv, tmp_path):
    import dp_accounting

    context = owner_context(owner_csv, tmp_path / "ledgers")
    replies = [run_train(context, train_message(FULL_BATCH_FIXED, r)) for r in (1, 2, 3)]
    claimed = replies[-1].content[wire.METRICS]["epsilon"]
    independent = _independent_pld(
        [20.0, 8.798, 8.798, 8.798], dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
    )
    assert independent <= claimed <= independent * 1.01
    assert replies[-1].content[wire.OWNER][wire.PRIVACY_DEFINITION] == "add-remove"


def test_a_public_count_is_sent_as_is_and_accounted_under_replace_one(owner_csv, tmp_path):
    import dp_accounting

    context = owner_context(owner_csv, tmp_path / "ledgers", budget=20.0)
    context.node_config["public-record-count"] = True
    replies = [run_train(context, train_message(FULL_BATCH_FIXED, r)) for r in (1, 2, 3)]
    reply = replies[-1]
    assert not reply.has_error(), reply.error
    assert reply.content[wire.METRICS]["num-examples"] == 600  # N itself, declared public
    assert reply.content[wire.OWNER][wire.PRIVACY_DEFINITION] == "replace-one"
    entries = PrivacyLedger(tmp_path / "ledgers").entries()
    assert [(e.kind, e.relation) for e in entries] == [("train", "replace-one")] * 3
    claimed = reply.content[wire.METRICS]["epsilon"]
    independent = _independent_pld([8.798] * 3, dp_accounting.NeighboringRelation.REPLACE_ONE)
    assert independent <= claimed <= independent * 1.01


def test_the_issues_figure_replace_one_doubles_the_sensitivity():
    """sigma 8.798 over 40 full-batch rounds: epsilon 3.00 under add/remove, 6.70 under
    replace-one (the figure the red team computed for the demo with N public)."""
    from fedshield.common.privacy import REPLACE_ONE, accounted_event, epsilon_spent

    rounds = [DpEvent(8.798, 1.0, 1)] * 40
    assert epsilon_spent(rounds, 1e-5) == pytest.approx(3.0, abs=0.01)
    replaced = [accounted_event(e, REPLACE_ONE) for e in rounds]
    assert epsilon_spent(replaced, 1e-5) == pytest.approx(6.70, abs=0.01)
    # Subsampled steps under replace-one are charged without amplification (rate 1).
    assert accounted_event(DpEvent(2.0, 0.1, 9), REPLACE_ONE) == DpEvent(1.0, 1.0, 9)


@pytest.mark.parametrize("released", [600, 0])
def test_a_label_isolated_by_the_class_list_tells_nothing(
    owner_data, tmp_path, monkeypatch, released
):
    """The red team's attack: against an owner with no class list of its own, a plan
    whose classes only one record holds leaves one usable row on D and none on D'.
    Both train and answer alike (an empty data version is noise on a zero sum), also
    when the count released is 0."""
    from fedshield.client import count

    monkeypatch.setattr(count, "noisy_count", lambda exact, std: released)
    isolating = ("rare", "junk")
    seen = []
    for name, data in (("D", owner_data), ("D'", owner_data.drop(index=7))):
        root = tmp_path / name
        root.mkdir()
        path = root / "owner.csv"
        data.to_csv(path, index=False)
        context = owner_context(path, root / "ledgers", budget=50.0)
        context.node_config["allow-evaluate"] = True
        plan = PLAN.replace(batch_size=0)
        train = run_train(context, with_classes(plan, isolating))
        evaluate = with_classes(plan, isolating)
        evaluate.metadata.message_type = "evaluate"
        answer = client_app()(evaluate, context)
        seen.append((observable("train", train), observable("evaluate", answer)))
    assert "error" not in seen[0][0] and "error" not in seen[0][1], seen[0]
    assert seen[0] == seen[1]


def test_a_ledger_keeps_the_relation_of_its_first_charge(owner_csv, tmp_path):
    """The red team's finding: add/remove charges re-labelled replace-one under-stated
    epsilon (1.152 against 1.793), and after an exact count left no add/remove claim
    holds. Switching is refused, on the owner's settings and ledger alone."""
    context = owner_context(owner_csv, tmp_path / "ledgers", budget=50.0)
    assert not run_train(context, train_message(FULL_BATCH_FIXED)).has_error()
    context.node_config["public-record-count"] = True
    switched = run_train(context, train_message(FULL_BATCH_FIXED, 2))
    assert switched.has_error() and switched.error.code == wire.ERROR_POLICY
    public = owner_context(owner_csv, tmp_path / "public", budget=50.0)
    public.node_config["public-record-count"] = True
    assert not run_train(public, train_message(FULL_BATCH_FIXED)).has_error()
    public.node_config["public-record-count"] = False
    back = run_train(public, train_message(FULL_BATCH_FIXED, 2))
    assert back.has_error() and back.error.code == wire.ERROR_POLICY
    assert [e.relation for e in PrivacyLedger(tmp_path / "public").entries()] == ["replace-one"]
