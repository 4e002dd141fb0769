"""The command line: bad input ends in one clear line and a non-zero exit, no traceback."""

from __future__ import annotations

import subprocess

import pandas as pd
import pytest

from tests.support.cli import FEDSHIELD


def fedshield(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*FEDSHIELD, *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["simulate", "--data", "no/such/file.csv"],
            "no such file; check the path passed to --data",
        ),
        (["simulate", "--rounds", "0"], "'num-rounds' = 0: must be >= 1"),
        (["simulate", "--epsilon", "0"], "target-epsilon"),
        (["simulate", "--partition", "zipf"], "use 'iid' or 'dirichlet'"),
        (["simulate", "--max-records", "2000", "--delta", "0.01"], "must be > 0 and < 1/N"),
        (["simulate", "--device", "tpu"], "use auto, cpu, cuda or cuda:N"),
    ],
)
def test_bad_simulate_options_fail_fast_with_the_value_and_the_fix(args, message):
    proc = fedshield(*args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in " ".join(proc.stderr.split())
    assert "Traceback" not in proc.stderr


def test_bad_data_columns_name_the_flag(tmp_path):
    path = tmp_path / "d.csv"
    pd.DataFrame({"body": ["a", "b"] * 100, "label": [0, 1] * 100}).to_csv(path, index=False)
    proc = fedshield("simulate", "--data", str(path), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert not (tmp_path / "out").exists(), "nothing is written before the input is valid"
    assert "text column 'text' not found (columns: body, label); pass --text-column" in " ".join(
        proc.stderr.split()
    )


def test_data_check_summarises_without_showing_text(owner_csv):
    proc = fedshield("data", "check", str(owner_csv))
    assert proc.returncode == 0, proc.stderr
    assert "600 records" in proc.stdout and "fingerprint" in proc.stdout
    first_text = pd.read_csv(owner_csv)["text"][0]
    assert first_text[:40] not in proc.stdout


def test_ledger_show_reports_the_composed_epsilon(owner_csv, tmp_path):
    from fedshield.client.ledger import OwnerLimits, PrivacyLedger
    from fedshield.common.dp_event import DpEvent
    from fedshield.common.privacy import epsilon_spent

    event = DpEvent(1.2, 0.1, 10)
    ledger = PrivacyLedger(tmp_path, OwnerLimits(10.0, 1e-5))
    for r in (1, 2):
        ledger.charge_ledger_before_release(event, run_id=5, server_round=r)
    proc = fedshield("ledger", "show", "--ledger-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert f"{epsilon_spent([event, event], 1e-5):.4f} (2 events" in proc.stdout


def test_a_tampered_ledger_is_reported_with_exit_code_4(owner_csv, tmp_path):
    from fedshield.client.ledger import PrivacyLedger

    ledger = PrivacyLedger(tmp_path)
    ledger.path.parent.mkdir(parents=True, exist_ok=True)
    ledger.path.write_text('{"body": {}, "checksum": "00"}')
    proc = fedshield("ledger", "show", "--ledger-dir", str(tmp_path))
    assert proc.returncode == 4 and "checksum mismatch" in proc.stderr


def test_an_error_message_is_printed_verbatim_brackets_included(tmp_path):
    """rich must not read 'fedshield[finetune]'-like text in a message as markup."""
    missing = tmp_path / "owner[finetune].csv"
    proc = fedshield("data", "check", str(missing))
    assert proc.returncode == 2
    assert "owner[finetune].csv" in " ".join(proc.stderr.split())


def test_pki_node_names_the_public_key_file_the_operator_passes(tmp_path):
    proc = fedshield("pki", "node", "owner-1", "--dir", str(tmp_path / "pki"))
    assert proc.returncode == 0, proc.stderr
    assert f"--node-key {tmp_path / 'pki' / 'owner-1.pub'}" in " ".join(proc.stdout.split())
