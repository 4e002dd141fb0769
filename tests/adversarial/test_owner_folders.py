"""Least privilege at the owner (issue 23, part): a ledger, audit or cache folder that
another local user can read or enter is refused at `client start`, with the fix, before
the node starts; folders fedshield creates itself are the owner's alone (0700)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from fedshield.client.ledger import OwnerLimits, PrivacyLedger
from fedshield.client.node_settings import SuperNodeSettings, check_inputs
from fedshield.common.config import OwnerConfig
from fedshield.common.errors import ConfigError


def _settings(tmp_path: Path, **folders: str) -> SuperNodeSettings:
    data = tmp_path / "owner.csv"
    data.write_text("text,label\nfine film,1\nbad film,0\n")
    owner = OwnerConfig.from_options(
        data_path=data,
        epsilon_budget=3.0,
        ledger_dir=folders.get("ledger_dir", str(tmp_path / "ledgers")),
        audit_dir=folders.get("audit_dir", str(tmp_path / "audit")),
        cache_dir=folders.get("cache_dir", ""),
    )
    return SuperNodeSettings(superlink="127.0.0.1:9092", ca=None, auth_key=None, owner=owner,
                             insecure=True)  # fmt: skip


@pytest.mark.parametrize("flag", ["ledger_dir", "audit_dir", "cache_dir"])
@pytest.mark.parametrize("mode", [0o755, 0o750, 0o701])
def test_a_folder_others_can_read_or_enter_is_refused_with_the_fix(tmp_path, flag, mode):
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(mode)
    with pytest.raises(ConfigError) as refused:
        check_inputs(_settings(tmp_path, **{flag: str(folder)}))
    message = str(refused.value)
    assert f"--{flag.replace('_', '-')} {folder}" in message
    assert f"chmod 700 {folder}" in message


def test_the_owners_own_folders_pass_and_missing_ones_are_made_private(tmp_path):
    private = tmp_path / "mine"
    private.mkdir(mode=0o700)
    check_inputs(_settings(tmp_path, ledger_dir=str(private), cache_dir=str(private)))
    check_inputs(_settings(tmp_path))  # not there yet: nothing to judge
    # What fedshield creates is the owner's alone.
    ledger = PrivacyLedger(tmp_path / "new-ledgers", OwnerLimits(3.0, 1e-5))
    ledger.record_budget()
    assert ledger.directory.is_dir()
    assert stat.S_IMODE(ledger.directory.stat().st_mode) & 0o077 == 0
