"""One TOML renderer: every value a node config, run config or Flower file may hold comes
back from Flower's own parser as written (an apostrophe broke the owner's node config)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from flwr.common.config import parse_config_args

from fedshield.common.toml_text import toml_value, write_toml

AWKWARD = {
    "data-path": '/srv/owner\'s data/"notes" v2\\raw.csv',
    "owner-id": "Hôpital Saint-Éloi",
    "multi-line": "a\nb\tc",
    "emoji": "\U0001f600",
    "empty": "",
    "delta": 1e-05,
    "epsilon-budget": 3.0,
    "rounds": 40,
    "allow-evaluate": True,
    "public-record-count": False,
}


def test_flowers_config_parser_reads_back_what_was_written(tmp_path: Path):
    path = write_toml(tmp_path / "node-config.toml", {None: AWKWARD})
    assert parse_config_args([str(path)]) == AWKWARD
    assert path.stat().st_mode & 0o777 == 0o600  # the owner's settings are its own


def test_tables_and_lists_parse_with_the_standard_library(tmp_path: Path):
    path = write_toml(
        tmp_path / "pyproject.toml",
        {"build-system": {"requires": ["hatchling"]}, "tool.flwr.app.config": AWKWARD},
        mode=0o644,
    )
    parsed = tomllib.loads(path.read_text(encoding="utf-8"))
    assert parsed["build-system"]["requires"] == ["hatchling"]
    assert parsed["tool"]["flwr"]["app"]["config"] == AWKWARD


def test_values_toml_cannot_hold_are_refused():
    with pytest.raises(ValueError, match="finite"):
        toml_value(float("nan"))
    with pytest.raises(TypeError, match="expected str"):
        toml_value(None)  # type: ignore[arg-type]
