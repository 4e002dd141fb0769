"""Rough edges a new user met (issue 22): flags that exist, quiet DP steps, installs named,
class names in predictions, no misleading Flower warning, tables that do not wrap."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import typer
from typer.testing import CliRunner

from fedshield.cli.app import app
from tests.support.paths import ROOT
from tests.support.ports import free_port

runner = CliRunner()


@pytest.fixture()
def body_topic_csv(tmp_path) -> Path:
    path = tmp_path / "eval.csv"
    pd.DataFrame(
        {"body": [f"text number {i}" for i in range(20)], "topic": ["sport", "tech"] * 10}
    ).to_csv(path, index=False)
    return path


@pytest.fixture()
def served(monkeypatch, tmp_path) -> list:
    """``server start`` up to the run: the request is checked as the real lifecycle checks
    it (the evaluation file read with the run's columns), then nothing is started."""
    from fedshield.server import operator

    requests = []

    def check_only(settings, request, say):
        requests.append(request)
        operator.check_request(settings, request)
        return tmp_path

    monkeypatch.setattr(operator, "serve_federation", check_only)
    return requests


def server_start(*args: str):
    ports = ("--port", str(free_port()), "--internal-port", str(free_port()))
    return runner.invoke(
        app, ["server", "start", "--insecure", *ports, "--classes", "sport,tech", *args]
    )


@pytest.mark.parametrize(
    "columns",
    [
        ("--text-column", "body", "--label-column", "topic"),
        ("--run-config", "text-column=body", "--run-config", "label-column=topic"),
    ],
)
def test_server_start_reads_the_evaluation_file_by_the_columns_named(
    served, body_topic_csv, columns
):
    result = server_start("--eval-data", str(body_topic_csv), *columns)
    assert result.exit_code == 0, result.output + repr(result.exception)
    values = served[0].run_values
    assert (values["text-column"], values["label-column"]) == ("body", "topic")


def test_a_missing_column_names_a_flag_server_start_has(served, body_topic_csv):
    from fedshield.common.errors import DataError

    result = server_start("--eval-data", str(body_topic_csv))
    assert isinstance(result.exception, DataError)
    message = str(result.exception)
    assert "text column 'text' not found (columns: body, topic); pass --text-column" in message
    command = typer.main.get_command(app).commands["server"].commands["start"]
    flags = {opt for param in command.params for opt in param.opts}
    assert {"--text-column", "--label-column"} <= flags


def test_dp_training_emits_no_backward_hook_warning(recwarn):
    from fedshield.client.train import TrainSettings, train_locally
    from fedshield.common.model import build_model

    rng = np.random.default_rng(0)
    features = rng.normal(size=(200, 16)).astype(np.float32)
    labels = rng.integers(0, 2, 200)
    settings = TrainSettings(batch_size=50, noise_multiplier=1.0)
    train_locally(build_model(16, 2), (features,), labels, settings, torch.device("cpu"))
    shown = [str(w.message) for w in recwarn]
    assert not [m for m in shown if "Full backward hook" in m], shown


def test_gpu_check_without_the_finetune_extra_says_what_to_install(monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--quick"])
    assert gpu_check.main() == 2
    said = capsys.readouterr()
    assert "pip install -e '.[finetune]'" in said.err and "make setup-finetune" in said.err
    assert "GPU CHECK" not in said.out


def saved_model(folder: Path, class_names: dict[str, str] | None) -> Path:
    from flwr.app import ArrayRecord

    from fedshield.common.model import ModelSpec
    from fedshield.server.outputs import RunOutputs

    spec = ModelSpec()
    module = spec.build(2)
    RunOutputs(folder).save_model(
        ArrayRecord(module.state_dict()), ("0", "1"), spec, class_names=class_names
    )
    return folder


def predicted(folder: Path) -> str:
    result = runner.invoke(app, ["predict", "--model", str(folder), "--text", "A fine film."])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def test_predictions_show_the_class_names_the_model_card_records(tmp_path):
    from fedshield.common.data import builtin_class_names
    from fedshield.common.errors import ModelRefused
    from fedshield.common.model_card import read_model_card

    assert builtin_class_names("imdb") == {"0": "negative", "1": "positive"}
    assert builtin_class_names("/data/eval.csv") == {}  # a file's labels are its own names
    named = saved_model(tmp_path / "imdb-run", builtin_class_names("imdb"))
    card = read_model_card(named)
    assert card.class_names == {"0": "negative", "1": "positive"}
    assert any(f"{name} ({label})" in predicted(named) for label, name in card.class_names.items())
    unnamed = saved_model(tmp_path / "file-run", None)
    shown = predicted(unnamed)
    assert "negative" not in shown and "positive" not in shown
    assert read_model_card(unnamed).shown("1") == "1"
    meta = json.loads((named / "model.json").read_text())
    (named / "model.json").write_text(json.dumps({**meta, "class-names": {"2": "odd"}}))
    with pytest.raises(ModelRefused, match="'class-names' must map classes"):
        read_model_card(named)


def test_building_a_strategy_logs_no_misleading_evaluation_warning(tmp_path):
    from flwr.serverapp.strategy import FedAvg

    from fedshield.common.audit_log import AuditLog
    from fedshield.server.strategy import (
        AGGREGATIONS,
        FLOWER_NO_EVALUATE_WARNING,
        build_strategy,
    )

    class Collect(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.DEBUG)
            self.messages: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.messages.append(record.getMessage())

    flower = logging.getLogger("flwr")
    collect = Collect()
    flower.addHandler(collect)
    try:
        for aggregation in AGGREGATIONS:
            build_strategy(
                aggregation,
                audit=AuditLog(tmp_path / aggregation / "audit.jsonl", actor="server"),
                max_update_norm=0.0,
                server_learning_rate=1.0,
                server_momentum=0.0,
                trim_fraction=0.1,
                fraction_train=1.0,
                fraction_evaluate=0.0,
                min_train_nodes=2,
                min_evaluate_nodes=0,
                min_available_nodes=2,
            )
        assert not [m for m in collect.messages if FLOWER_NO_EVALUATE_WARNING in m]
        FedAvg(fraction_evaluate=0.0)  # the warning is Flower's, and only ours is quiet
        assert [m for m in collect.messages if FLOWER_NO_EVALUATE_WARNING in m]
    finally:
        flower.removeHandler(collect)


def test_a_piped_table_keeps_a_20_character_owner_on_one_line():
    owner, key = "owner-hospital-north", "SHA256:q3ZmR0Yk5Q0n2cX8Jc1m8v0o1Jm8y3kqg4E2fH7dQ9s"
    assert len(owner) == 20
    script = (
        "from rich.table import Table\n"
        "from fedshield.cli.shared import console\n"
        "table = Table('owner', 'node key', 'epsilon spent', 'budget', 'left')\n"
        f"table.add_row({owner!r}, {key!r}, '1.2345', '3', '1.7655')\n"
        "console.print(table)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if owner in line]
    assert len(rows) == 1 and key in rows[0], proc.stdout


def test_waiting_for_supernodes_reports_progress(monkeypatch):
    """'waiting for N SuperNodes' was one line for up to 300 s: now the operator hears each
    change in how many are online (and a line every 15 s without one)."""
    from fedshield.server import deployment as dep

    online = iter([0, 0, 1, 1, 3])
    monkeypatch.setattr(dep, "online_nodes", lambda settings: next(online))
    monkeypatch.setattr(dep.time, "sleep", lambda s: None)
    heard: list[int] = []
    dep.wait_for_nodes(None, 3, 60.0, lambda count, waited: heard.append(count))
    assert heard == [0, 1]


RAY_BROKEN = {
    "fails": "raise RuntimeError('raylet failed to start: no space left on device')",
    "hangs": "time.sleep(3600)",
}


@pytest.mark.parametrize("how", sorted(RAY_BROKEN))
def test_simulate_ends_with_one_line_when_ray_cannot_start(tmp_path, how):
    """simulate hung for minutes after 200 lines of traceback when Ray failed to start
    on a loaded machine. A test-only sitecustomize breaks ray.init in the subprocess."""
    import os
    import subprocess
    import time

    from tests.support.cli import FEDSHIELD

    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import time\n"
        "import ray\n"
        "def broken(*args, **kwargs):\n"
        f"    {RAY_BROKEN[how]}\n"
        "ray.init = broken\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
        "FEDSHIELD_RAY_START_TIMEOUT_S": "5",
        "FLWR_TELEMETRY_ENABLED": "0",
    }
    args = ["simulate", "--clients", "2", "--rounds", "1", "--max-records", "200"]
    started = time.monotonic()
    proc = subprocess.run(
        [*FEDSHIELD, *args, "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 8, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert time.monotonic() - started < 60
    assert "Ray (the simulation engine)" in proc.stderr and "Traceback" not in proc.stderr
    assert "nothing was charged" in proc.stderr
    assert not list((tmp_path / "run").rglob("ledger.json"))
