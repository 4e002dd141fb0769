"""The operator's view and control of a running federation, against a real deployment
on 127.0.0.1: `fedshield server start --keep-running` (TLS, node authentication) with
two owners' `fedshield client start` (answering evaluate requests) after a one-round
run; `server status` (epsilon with every charge, under the owner's key), the
gateway's published files (federation.json, removal notices) and `server remove-owner`.
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import subprocess
import time
from types import SimpleNamespace

import pytest

from fedshield.audit.verify import verify_log
from fedshield.client.ledger import PrivacyLedger
from fedshield.common.errors import ConfigError
from fedshield.common.federation_info import (
    FEDERATION_FILE,
    FEDERATION_PATH,
    NOTICE_PATH_PREFIX,
    notice_id,
    write_federation_info,
    write_notice,
)
from fedshield.common.pki import ssh_public_key_fingerprint
from fedshield.common.processes import flower_env
from fedshield.server import deployment as dep
from fedshield.server.owner_registry import save_owner_registry
from fedshield.server.superlink import SuperLinkSettings
from tests.support.cli import FEDSHIELD
from tests.support.deployment import module_deployment, serve, start_owner
from tests.support.ports import free_port

pytestmark = pytest.mark.slow

# pki and data: the deployment tests' module-scoped fixtures (tests/conftest.py).
OWNERS = ("owner-0", "owner-1")


def fedshield(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*FEDSHIELD, *args], capture_output=True, text=True, timeout=timeout, env=flower_env()
    )


@pytest.fixture(scope="module")
def federation(pki, data, tmp_path_factory):
    """Two authenticated owners online after a finished one-round run; the SuperLink
    keeps running."""
    with module_deployment(tmp_path_factory, "operator") as (work, procs):
        served = serve(
            procs,
            pki,
            work,
            len(OWNERS),
            *[a for name in OWNERS for a in ("--node-key", str(pki / f"{name}.pub"))],
            "--node-timeout-s",
            "180",
            "--keep-running",
            "--classes",
            "0,1",
            "--eval-data",
            str(data / "eval.csv"),
            "--run-config",
            "num-rounds=1",
            "--run-config",
            "fraction-evaluate=1.0",  # evaluate answers are charges too: status must count them
        )
        port, state, server = served.port, served.state, served.server
        homes = {name: work / name for name in OWNERS}
        owners = {
            name: start_owner(procs, pki, data, port, name, homes[name], "--allow-evaluate")
            for name in OWNERS
        }
        deadline = time.monotonic() + 600
        while "SuperLink keeps running" not in server.log_text():
            assert server.running and time.monotonic() < deadline, server.log_text()[-4000:]
            time.sleep(0.5)
        if not (state / FEDERATION_FILE).exists():  # written by `server start` once it publishes
            write_federation_info(state, {"classes": ["0", "1"], "model": "hashed"})
        yield SimpleNamespace(
            port=port, state=state, server=server, owners=owners, homes=homes, work=work
        )


def status(federation) -> dict:
    proc = fedshield("server", "status", "--state", str(federation.state), "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def get(federation, pki, path: str, method: str = "GET") -> tuple[int, str, bytes]:
    connection = http.client.HTTPSConnection(
        "127.0.0.1",
        federation.port,
        context=ssl.create_default_context(cafile=str(pki / "ca.crt")),
        timeout=10,
    )
    connection.request(method, path)
    response = connection.getresponse()
    return response.status, response.getheader("content-type", ""), response.read()


def test_status_shows_owners_keys_connections_rounds_and_budgets(federation, pki):
    view = status(federation)
    assert view["superlink"]["reachable"], view["superlink"]
    assert view["run"]["rounds-done"] == 1 and view["run"]["rounds-planned"] == 1
    assert view["run"]["finished"] and 0.0 <= view["run"]["last-accuracy"] <= 1.0
    rows = {row["name"]: row for row in view["owners"]}
    assert sorted(rows) == list(OWNERS), view["owners"]
    for name in OWNERS:
        row = rows[name]
        assert row["fingerprint"] == ssh_public_key_fingerprint(pki / f"{name}.pub")
        assert row["connected"] is True and row["connection"] == "online"
        assert row["label-self-declared"] == name  # the owner's claim, shown as one
        ledger = PrivacyLedger(federation.homes[name] / "ledgers")
        assert {e.kind for e in ledger.entries()} >= {"train", "evaluate"}
        spent = ledger.epsilon(1e-5)  # every charge: train and evaluate
        assert row["epsilon-spent"] == pytest.approx(spent)
        assert "evaluate reply" in row["epsilon-from"]
        assert row["epsilon-budget"] == 5.0
        assert row["epsilon-left"] == pytest.approx(5.0 - spent)

    table = fedshield("server", "status", "--state", str(federation.state))
    assert table.returncode == 0, table.stderr
    text = " ".join(table.stdout.split())
    assert "SuperLink: running" in text and "round 1 of 1" in text
    for name in OWNERS:
        assert ssh_public_key_fingerprint(pki / f"{name}.pub")[:20] in table.stdout


def test_the_gateway_publishes_federation_info_and_notices_only(federation, pki):
    code, kind, body = get(federation, pki, FEDERATION_PATH)
    assert (code, kind) == (200, "application/json")
    assert json.loads(body) == json.loads((federation.state / FEDERATION_FILE).read_text())
    code, _, body = get(federation, pki, FEDERATION_PATH, method="HEAD")
    assert code == 200 and body == b""

    fingerprint = ssh_public_key_fingerprint(pki / "stranger.pub")
    path = NOTICE_PATH_PREFIX + notice_id(fingerprint)
    assert get(federation, pki, path)[0] == 404  # no notice for this key yet
    write_notice(federation.state, fingerprint, "removed", "test notice")
    code, kind, body = get(federation, pki, path)
    assert (code, kind) == (200, "application/json")
    assert json.loads(body)["reason"] == "test notice"

    refused_log = federation.state / "logs" / "gateway-refused.jsonl"
    before = len(refused_log.read_text().splitlines()) if refused_log.exists() else 0
    probes = [
        NOTICE_PATH_PREFIX + notice_id(fingerprint).upper(),
        NOTICE_PATH_PREFIX + notice_id(fingerprint)[:63],
        NOTICE_PATH_PREFIX + notice_id(fingerprint) + ".json",
        NOTICE_PATH_PREFIX + "../owners.json",
        NOTICE_PATH_PREFIX + "..%2f..%2fowners.json",
        NOTICE_PATH_PREFIX + "%2e%2e/" + FEDERATION_FILE,
        "/fedshield/v1/" + FEDERATION_FILE,
    ]
    for probe in probes:
        code, _, body = get(federation, pki, probe)
        assert code == 404, probe
        assert b"{" not in body  # a refusal, not a file's JSON
    assert len(refused_log.read_text().splitlines()) == before + len(probes)


def test_remove_owner_notifies_then_unregisters(federation, pki):
    """Before the last test: it removes owner-1 from the shared federation."""
    key = pki / "owner-1.pub"
    fingerprint = ssh_public_key_fingerprint(key)
    reason = "left the consortium (contract ended)"
    proc = fedshield(
        "server", "remove-owner", "--state", str(federation.state), "--node-key", str(key),
        "--reason", reason,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "unregistered" in proc.stdout and "owner-removed" in proc.stdout

    code, _, body = get(federation, pki, NOTICE_PATH_PREFIX + notice_id(fingerprint))
    assert code == 200
    notice = json.loads(body)
    assert (notice["fingerprint"], notice["action"], notice["reason"]) == (
        fingerprint,
        "removed",
        reason,
    )
    owner = federation.owners["owner-1"]
    deadline = time.monotonic() + 90
    while owner.running:  # the SuperLink refuses the node: its SuperNode stops
        assert time.monotonic() < deadline, owner.log_text()[-3000:]
        time.sleep(0.5)
    assert federation.owners["owner-0"].running

    rows = {row["name"]: row for row in status(federation)["owners"]}
    assert rows["owner-1"]["removed"]["reason"] == reason
    assert rows["owner-1"]["connection"] == "unregistered" and not rows["owner-1"]["connected"]
    assert rows["owner-0"]["connected"] is True
    (log_path,) = (federation.state / "runs").glob("*/audit/server/audit.jsonl")
    log = verify_log(log_path)
    assert log.ok, log.problem
    (removed,) = [e["data"] for e in log.entries if e["type"] == "owner-removed"]
    assert (removed["node-key-fingerprint"], removed["reason"]) == (fingerprint, reason)

    again = fedshield(
        "server", "remove-owner", "--state", str(federation.state), "--node-key", str(key),
        "--reason", reason,
    )  # fmt: skip
    assert again.returncode == 2 and "already removed" in again.stderr


def test_status_without_a_running_superlink_still_shows_the_files(federation, pki):
    """Last: it stops the shared server."""
    federation.server.stop(grace_s=15)
    proc = fedshield("server", "status", "--state", str(federation.state))
    assert proc.returncode == 0, proc.stderr
    assert "NOT RUNNING" in proc.stdout
    view = status(federation)
    assert not view["superlink"]["reachable"]
    rows = {row["name"]: row for row in view["owners"]}
    assert rows["owner-0"]["connected"] is None
    assert rows["owner-0"]["label-self-declared"] == "owner-0"
    assert rows["owner-0"]["epsilon-spent"] > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("server", "status", "--state", "no-such-state"), "no such folder"),
        (
            ("server", "remove-owner", "--state", ".", "--node-key", "x.pub", "--reason", "r"),
            "not a fedshield server state folder",
        ),
        (
            (
                "server",
                "remove-owner",
                "--state",
                "{state}",
                "--node-key",
                "missing.pub",
                "--reason",
                "r",
            ),
            "missing.pub: no such file",
        ),  # fmt: skip
        (
            (
                "server",
                "remove-owner",
                "--state",
                "{state}",
                "--node-key",
                "{key}",
                "--reason",
                "  ",
            ),
            "--reason is empty",
        ),  # fmt: skip
    ],
)
def test_input_errors_answer_fast(tmp_path, pki, args, message):
    state = tmp_path / "state"
    (state / "runs").mkdir(parents=True)
    args = [a.format(state=state, key=pki / "owner-0.pub") for a in args]
    started = time.monotonic()
    proc = subprocess.run([*FEDSHIELD, *args], capture_output=True, text=True, cwd=tmp_path)
    elapsed = time.monotonic() - started
    assert proc.returncode == 2 and message in " ".join(proc.stderr.split()), proc.stderr
    assert elapsed < 5, f"{elapsed:.1f} s"  # about 1 s here; 5 s leaves room for a loaded CI


def test_a_removed_key_is_not_registered_again(tmp_path, pki):
    """Flower keeps a removed key unusable; `server start` says so instead of "node None"."""
    key = pki / "owner-2.pub"
    removed = {"time": "2026-11-28T10:00:00+00:00", "reason": "left", "notice-id": "0" * 64}
    state = tmp_path / "state"
    state.mkdir()
    save_owner_registry(
        state,
        [
            {
                "name": "owner-2",
                "key": str(key),
                "fingerprint": ssh_public_key_fingerprint(key),
                "node-id": 7,
                "time": removed["time"],
                "removed": removed,
            }
        ],
    )
    settings = SuperLinkSettings(
        pki_dir=pki, state_dir=state, port=free_port(), internal_port=free_port()
    )
    with pytest.raises(ConfigError, match="was removed from this federation on 2026-11-28"):
        dep.register_node_keys(settings, [key])


def test_status_reads_every_run_so_a_refused_run_does_not_empty_the_table(tmp_path, monkeypatch):
    """A run every owner refused has no anchored reply; the owners' epsilon comes from
    their newest anchored reply in any run of the state folder."""
    import json

    from fedshield.common.audit_events import Event
    from fedshield.common.audit_log import AuditLog
    from fedshield.server import status as status_module

    monkeypatch.setattr(status_module, "_superlink_view", lambda state: ({"reachable": False}, {}))
    state = tmp_path / "state"
    owner = {"server-round": 1, "node-id": 4, "node-key-fingerprint": "SHA256:owner-four"}
    accepted = {"owner-audit-head": "f" * 64, "metrics": {"epsilon": 1.25, "epsilon-budget": 3.0}}
    for age, (run, kind, reply) in enumerate(
        [
            ("older", Event.UPDATE_RECEIVED, accepted),
            ("newer", Event.CLIENT_REFUSED, {"reason": "owner-four: over its budget"}),
        ]
    ):
        folder = state / "runs" / run
        log = AuditLog(folder / "audit" / "server" / "audit.jsonl", actor="server")
        log.append(kind, **owner, **reply)
        (folder / "metrics.json").write_text(json.dumps({"rounds": [], "run": {}}))
        os.utime(folder / "metrics.json", (1_000_000 + age, 1_000_000 + age))
    view = status_module.federation_status(state)
    assert view["run"]["folder"].endswith("newer")
    (row,) = view["owners"]
    assert row["fingerprint"] == "SHA256:owner-four"
    assert row["epsilon-spent"] == 1.25 and row["epsilon-left"] == pytest.approx(1.75)
