"""Least privilege at the owner (issue 23, part 5): after a real round, everything
fedshield wrote in the owner's ledger, audit, cache and key folders is the owner's alone
(files 0600, folders 0700), also under a umask that would have let others read them."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.support.client_app import owner_context, run_train


@pytest.fixture()
def loose_umask():
    """022, as on most machines: a file created without an explicit mode is 0644."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def loose_entries(folder: Path) -> list[str]:
    """Each file or folder under ``folder`` (itself included) that its group or others
    may read, write or enter, with its mode."""
    entries = [folder, *folder.rglob("*")]
    return [
        f"{path} {oct(stat.S_IMODE(path.lstat().st_mode))}"
        for path in entries
        if stat.S_IMODE(path.lstat().st_mode) & 0o077
    ]


@pytest.mark.usefixtures("flower_task_identity", "loose_umask")
def test_a_round_leaves_only_owner_private_files_and_folders(owner_csv, tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))  # the cache and key folders' defaults live here
    context = owner_context(owner_csv, home / ".fedshield" / "ledgers")
    reply = run_train(context)
    assert not reply.has_error(), reply.error

    folders = {name: home / ".fedshield" / name for name in ("ledgers", "audit", "cache", "keys")}
    written = {name: sorted(p.name for p in f.rglob("*")) for name, f in folders.items()}
    # What a round writes, so the walk below has something to judge.
    assert "ledger.json" in written["ledgers"] and "ledger.lock" in written["ledgers"]
    assert {"audit.jsonl", "audit-key.pem", "audit-key.pub"} <= set(written["audit"])
    assert written["cache"] and written["keys"], written
    for name, folder in folders.items():
        assert loose_entries(folder) == [], f"{name}: others may read these"
