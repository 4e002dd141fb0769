"""Adversarial review of issue 22's changes (warm executor hand-back, TOML files, object
pull retries, learnt round timeouts). A failing test is a finding; a passing one a defence."""

from __future__ import annotations

import os
import tomllib
import types

import pytest

from fedshield.common.dp_event import DpEvent

# --- 1. accounting results handed back to the zygote ---------------------------------


def _pipe():
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    return r, w


def test_handed_back_calibration_is_the_same_key_and_value_in_the_zygote():
    """Defence: a calibration under replace-one with a count release round-trips to the
    exact key the next task looks up, with the exact value (no key collision)."""
    from fedshield.client import executor
    from fedshield.common import privacy

    privacy.learned_lines()
    fixed = (DpEvent(7.0, 1.0, 1),)
    args = (2.0, 1e-5, 0.125, 40, fixed, privacy.REPLACE_ONE)
    sigma = privacy.noise_for_target_epsilon(
        2.0, 1e-5, 0.125, 40, with_events=fixed, relation=privacy.REPLACE_ONE
    )
    r, w = _pipe()
    try:
        executor._hand_back_learned(w)
        privacy._memos["_calibrate"].clear()
        privacy._memos["_epsilon_pld"].clear()
        executor._take_learned(r, bytearray())
    finally:
        os.close(r)
        os.close(w)
    assert privacy._memos["_calibrate"][args] == sigma
    # The same public parameters under add/remove are a different key, not this value.
    assert (2.0, 1e-5, 0.125, 40, fixed, privacy.ADD_REMOVE) not in privacy._memos["_calibrate"]


@pytest.mark.parametrize(
    "line",
    [
        # steps = Infinity: int(inf) raises OverflowError, not caught by learn()
        b'["_calibrate", [1.0, 1e-05, 0.1, 10, [{"DpEvent": [1.0, 1.0, Infinity]}], "add-remove"], 1.0]',
        # deep nesting: RecursionError from the JSON decoder / _from_plain
        b'["_epsilon_pld", ' + b"[" * 3000 + b"]" * 3000 + b", 1.0]",
    ],
)
def test_a_malformed_learned_line_does_not_kill_the_zygote(line):
    """Hardening: learn() promises False for anything not well formed; an exception here
    propagates out of _take_learned and ends the zygote's loop (every later task lost)."""
    from fedshield.client import executor

    r, w = _pipe()
    try:
        os.write(w, line[:4000] + b"\n")
        executor._take_learned(r, bytearray())
    finally:
        os.close(r)
        os.close(w)


# --- 2. TOML files ---------------------------------------------------------------------


@pytest.mark.parametrize("value", ["a'b\"c\\d\nx = 1", "naïve ✓", "tab\there"])
def test_toml_values_cannot_add_a_key(tmp_path, value):
    from fedshield.common.toml_text import write_toml

    path = write_toml(tmp_path / "c.toml", {None: {"data-path": value, "owner-id": "o"}})
    assert tomllib.loads(path.read_text()) == {"data-path": value, "owner-id": "o"}
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)


def test_server_published_class_names_cannot_carry_what_toml_rejects():
    """Defence: the federation's class list (server-chosen) goes into the node config; the
    class-name pattern excludes DEL and control characters that TOML refuses."""
    from fedshield.common.plan import CLASS_NAME

    for bad in ["a\x7fb", "a\x00b", "a\nb", "a\ud800b", 'a"b', "a,b"]:
        assert not CLASS_NAME.fullmatch(bad.strip())


def test_toml_value_with_del_parses(tmp_path):
    """Robustness: json.dumps leaves U+007F raw; TOML forbids it in basic strings, so an
    owner's value holding DEL makes flower-supernode refuse the whole node config."""
    from fedshield.common.toml_text import write_toml

    path = write_toml(tmp_path / "c.toml", {None: {"data-path": "/data/a\x7fb.csv"}})
    assert tomllib.loads(path.read_text())["data-path"] == "/data/a\x7fb.csv"


def test_node_config_failure_leaves_no_secret_folder(tmp_path, monkeypatch):
    """The node config is written before run_supernode's try/finally: a value write_toml
    refuses (here a non-finite number) leaves the folder with the SuperExec secret."""
    import tempfile

    from fedshield.client import supernode

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    stops = types.SimpleNamespace(received=None)
    with pytest.raises((ValueError, TypeError, UnicodeError)):
        supernode.run_supernode(None, {"count-noise": float("nan")}, stops, "SHA256:x")  # type: ignore[arg-type]
    assert list(tmp_path.glob("fedshield-superexec-*")) == []


# --- 3. object pull retries ------------------------------------------------------------


def test_a_missing_object_is_not_polled_more_often_than_flower_would():
    """A hostile server announces objects it never pushes: the owner retries each until
    max_tries. Flower: 500 tries (1 s doubling to 10 s); fedshield: 10,000 (to 0.5 s),
    20x the requests for the same ~83 minutes."""
    from flwr.supercore.inflatable import inflatable_utils

    from fedshield.common.flower_compat import shorten_object_pull_retries

    shorten_object_pull_retries()
    tries = inflatable_utils.pull_objects.__kwdefaults__["max_tries_per_object"]
    cap = inflatable_utils.pull_objects.__kwdefaults__["backoff_cap"]
    assert tries <= 2 * 500 and cap >= 5


# --- 4. learnt round timeouts ----------------------------------------------------------


def test_an_empty_evaluate_batch_does_not_collapse_the_learnt_wait(flower_task_identity):
    """Flower's Strategy.start calls send_and_receive for evaluation every round, with no
    messages when fraction-evaluate is 0 (the default). PromptGrid then observes a
    'complete round' of ~0 s, and the next train round waits the 120 s floor instead of
    5 x the first round: slower honest owners are dropped (charged, update lost) and,
    no round being complete again, the wait never recovers."""
    from fedshield.server.poll import PromptGrid
    from fedshield.server.round_timeout import RoundTimeouts
    from tests.support.grid import OwnersAnsweringAfter

    timeouts = RoundTimeouts.for_plan(0, "minilm")
    grid = PromptGrid(OwnersAnsweringAfter([]), interval_s=0.01, timeouts=timeouts)  # type: ignore[arg-type]
    assert timeouts.next_timeout_s() == 3 * 3600  # round 1 train
    timeouts.observe(1800.0, replied=True)  # honest owners took 30 min
    list(grid.send_and_receive([]))  # round 1 evaluate: fraction-evaluate = 0
    assert timeouts.next_timeout_s() >= 1800.0  # round 2 train: got 120 s


def test_one_silent_owner_does_not_pin_every_round_at_the_allowance():
    """A hostile (or merely hung) owner that never answers makes no round 'complete';
    nothing is learnt and every train/evaluate batch waits the first-round allowance
    (3 h for MiniLM) although the others answered in seconds."""
    from fedshield.server.round_timeout import RoundTimeouts

    timeouts = RoundTimeouts.for_plan(0, "minilm")
    waits = []
    for _ in range(4):
        waits.append(timeouts.next_timeout_s())
        timeouts.observe(30.0, replied=True)  # others in 30 s, one silent
    assert max(waits[1:]) < 3 * 3600


# --- 6. the plan never carries the owner's policy --------------------------------------


@pytest.mark.parametrize(
    "key,value",
    [("epsilon-budget", 1e9), ("delta", 0.5), ("count-noise", 0.0),
     ("public-record-count", True), ("allow-no-dp", True), ("allow-evaluate", True),
     ("run-epsilon-cap", 1e9), ("evaluate-noise-multiplier", 0.0)],
)  # fmt: skip
def test_policy_keys_in_a_plan_reach_no_owner_setting(key, value):
    from flwr.app import ConfigRecord

    from fedshield.client.accept import check_plan_record
    from fedshield.common import wire
    from fedshield.common.config import RunConfig
    from fedshield.common.errors import FedshieldError
    from fedshield.common.plan import Plan

    record = wire.encode_train_plan(RunConfig(), ("a", "b"))
    record = ConfigRecord({**dict(record), key: value})
    try:
        check_plan_record(record)
    except FedshieldError:
        return  # refused outright: defended
    plan, _, _ = wire.decode_train_plan(record)
    assert isinstance(plan, Plan) and key not in plan.as_dict()
