"""Fuzzing the two places untrusted input enters: data files and configuration.

Whatever the bytes or values, the outcome is a loaded data set or a FedshieldError
with a message, never another exception."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedshield.common.config import OwnerConfig, RunConfig
from fedshield.common.data import load_dataset
from fedshield.common.errors import ConfigError, DataError

FUZZ = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FUZZ
@given(content=st.binary(max_size=400), suffix=st.sampled_from([".csv", ".jsonl", ".parquet"]))
def test_arbitrary_bytes_load_or_fail_cleanly(tmp_path, content, suffix):
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(content)
    try:
        data = load_dataset(path)
    except DataError as exc:
        assert str(exc).startswith(str(path))
    else:
        assert len(data) >= 2 and len(data.classes) >= 2


CELL = st.one_of(st.text(max_size=12), st.integers(-3, 3), st.none(), st.floats(allow_nan=True))


@FUZZ
@given(rows=st.lists(st.tuples(CELL, CELL), max_size=12))
def test_arbitrary_jsonl_records_load_or_fail_cleanly(tmp_path, rows):
    import json

    path = tmp_path / "fuzz.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in rows))
    try:
        data = load_dataset(path)
    except DataError:
        return
    assert all(isinstance(t, str) and t.strip() for t in data.texts)
    assert len(set(data.labels.tolist())) >= 2


VALUES = st.one_of(
    st.integers(-(10**6), 10**6), st.floats(allow_nan=True), st.text(max_size=8), st.booleans()
)


@FUZZ
@given(
    values=st.dictionaries(
        st.sampled_from([*RunConfig().as_dict(), "bogus-key"]), VALUES, max_size=6
    )
)
def test_arbitrary_run_config_parses_or_fails_cleanly(values):
    try:
        config = RunConfig.from_dict(values)
    except ConfigError as exc:
        assert "configuration key" in str(exc) or "unknown configuration key" in str(exc)
    else:
        assert config.num_rounds >= 1 and 0 < config.delta < 1


@FUZZ
@given(
    values=st.dictionaries(
        st.sampled_from([*OwnerConfig().as_dict(), "partition-id"]), VALUES, max_size=6
    )
)
def test_arbitrary_owner_config_parses_or_fails_cleanly(values):
    with contextlib.suppress(ConfigError):
        OwnerConfig.from_dict(values)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"num-rounds": -1}, "'num-rounds' = -1: must be >= 1"),
        ({"num-rounds": "ten"}, "expected int, got 'ten'"),
        ({"delta": 0}, "'delta' = 0.0"),
        ({"batch-size": -1}, "'batch-size' = -1"),
        ({"epsilon": 3}, "unknown configuration key 'epsilon'"),
        ({"dp": "maybe"}, "expected bool"),
    ],
)
def test_config_errors_name_the_key_and_value(values, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_dict(values)
