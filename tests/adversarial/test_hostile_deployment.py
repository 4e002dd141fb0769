"""Strangers and foreign apps against a real deployment on 127.0.0.1: `fedshield server
start` (SuperLink on loopback behind the Fleet-only TLS gateway, node authentication) and
one owner's `fedshield client start`, real keys and data.

The stranger holds only the federation's public ca.crt and the public address. It must
not start runs, register keys or list runs there; and a foreign app that reaches the
owner anyway (through the operator's loopback Control API, as a compromised operator
account could) must not run at the owner: refused, audited, nothing of it executed."""

from __future__ import annotations

import http.client
import json
import socket
import sqlite3
import ssl
import subprocess
import time
import tomllib
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import unquote

import httpx
import pytest

from fedshield.audit.verify import verify_log
from fedshield.common.pki import ssh_public_key_fingerprint
from fedshield.common.processes import flower_env
from fedshield.server.deployment import write_app_dir
from tests.support.deployment import (
    module_deployment,
    serve,
    start_federation,
    start_owner,
)

pytestmark = pytest.mark.slow

# The deployment tests' module-scoped fixtures (tests/conftest.py): the federation's PKI
# (with a "stranger" key pair), small IMDB CSVs per owner, and the process reaper.

FOREIGN_SERVERAPP = """
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context) -> None:
    messages = [
        Message(RecordDict({"c": ConfigRecord({"x": 1})}), dst_node_id=node, message_type="train")
        for node in grid.get_node_ids()
    ]
    for reply in grid.send_and_receive(messages, timeout=60):
        print("reply has error:", reply.has_error())
"""

# Runs at import: what a foreign ClientApp would do first on an owner's machine.
FOREIGN_CLIENT_CODE = """
from pathlib import Path

Path({marker!r}).write_text(Path({data!r}).read_text()[:200])

from flwr.clientapp import ClientApp

app = ClientApp()
"""


def flwr(home: Path, *args: str, timeout: int = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["flwr", *args],  # flower_env puts this interpreter's bin/ first on PATH
        capture_output=True,
        text=True,
        timeout=timeout,
        env=flower_env(home),
    )


def answer(proc: subprocess.CompletedProcess) -> dict:
    """`flwr ... --format json` says success in its JSON, not always in its exit code."""
    try:
        return json.loads(proc.stdout)
    except ValueError:
        return {"success": False, "error-message": proc.stdout + proc.stderr}


def write_foreign_app(
    directory: Path, name: str, clientapp: str, marker: Path, data: str | Path
) -> Path:
    """A Flower app of the stranger's own: its ServerApp, and the module ``clientapp``
    names (``package.module:attribute``; its packages too) as FOREIGN_CLIENT_CODE, which
    copies the start of ``data`` to ``marker`` as it is imported."""
    module = clientapp.partition(":")[0].split(".")
    client_files = {"/".join(module[:i]) + "/__init__.py": "" for i in range(1, len(module))}
    client_files["/".join(module) + ".py"] = FOREIGN_CLIENT_CODE.format(
        marker=str(marker), data=str(data)
    )
    directory.mkdir(parents=True)
    (directory / "pyproject.toml").write_text(
        "\n".join(
            [
                "[build-system]",
                'requires = ["hatchling"]',
                'build-backend = "hatchling.build"',
                "[project]",
                f'name = "{name}"',
                'version = "1.0.0"',
                'description = "not fedshield"',
                'license = "Apache-2.0"',
                "dependencies = []",
                "[tool.flwr.app]",
                'publisher = "stranger"',
                "[tool.flwr.app.components]",
                'serverapp = "stranger_server:app"',
                f'clientapp = "{clientapp}"',
                "[tool.flwr.app.config]",
                "x = 1",
                "",
            ]
        )
    )
    (directory / "stranger_server.py").write_text(FOREIGN_SERVERAPP)
    for relative, text in client_files.items():
        (directory / relative).parent.mkdir(parents=True, exist_ok=True)
        (directory / relative).write_text(text)
    return directory


def connection_home(directory: Path, address: str, ca: Path) -> Path:
    """A $FLWR_HOME whose default connection dials ``address`` trusting ``ca``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.toml").write_text(
        "[superlink]\n"
        'default = "target"\n\n'
        "[superlink.target]\n"
        f'address = "{address}"\n'
        f'root-certificates = "{ca.resolve()}"\n'
    )
    return directory


@pytest.fixture(scope="module")
def federation(pki, data, tmp_path_factory):
    """One SuperLink behind its gateway, owner-0 online through the gateway. The server
    waits for a second node that never comes, so its own run never starts."""
    with module_deployment(tmp_path_factory, "hostile") as (work, procs):
        served = serve(
            procs,
            pki,
            work,
            2,
            "--node-key",
            str(pki / "owner-0.pub"),
            "--wait-nodes",
            "2",
            "--node-timeout-s",
            "900",
            "--classes",
            "0,1",
            "--eval-data",
            str(data / "eval.csv"),
        )
        public, state = served.port, served.state
        owner_home = work / "owner-0"
        owner = start_owner(procs, pki, data, public, "owner-0", owner_home)
        operator_home = state / "flwr-home"  # written by `server start`: the loopback connection
        internal = tomllib.loads((operator_home / "config.toml").read_text())["superlink"]
        internal = int(internal["fedshield"]["address"].rpartition(":")[2])
        deadline = time.monotonic() + 120
        while True:
            listed = answer(flwr(operator_home, "supernode", "ls", "--format", "json"))
            if any(node["status"] == "online" for node in listed.get("nodes", [])):
                break
            assert owner.running and time.monotonic() < deadline, owner.log_text()[-3000:]
            time.sleep(1)
        yield SimpleNamespace(
            public=public,
            internal=internal,
            state=state,
            server=served.server,
            owner=owner,
            owner_audit=owner_home / "audit" / "audit.jsonl",
            data_file=data / "owner-0.csv",
            operator_home=operator_home,
            stranger_home=connection_home(work / "stranger", f"127.0.0.1:{public}", pki / "ca.crt"),
            work=work,
        )


def operator_runs(federation) -> list[dict]:
    listed = answer(flwr(federation.operator_home, "ls", "--format", "json"))
    assert listed["success"], listed
    return listed["runs"]


def test_a_stranger_cannot_start_a_run_on_the_public_port(federation, tmp_path):
    marker = tmp_path / "marker"
    app = write_foreign_app(
        tmp_path / "app", "takeover", "stranger_client:app", marker, "/etc/hostname"
    )
    tried = answer(flwr(federation.stranger_home, "run", str(app), "--format", "json"))
    assert not tried["success"], tried
    assert "403" in tried["error-message"]
    assert not [r for r in operator_runs(federation) if r["fab-id"] == "stranger/takeover"]
    assert not marker.exists()


def test_a_stranger_cannot_register_a_node_key_on_the_public_port(federation, pki):
    tried = answer(
        flwr(
            federation.stranger_home,
            "supernode",
            "register",
            str(pki / "stranger.pub"),
            "--format",
            "json",
        )
    )
    assert not tried["success"], tried
    assert "403" in tried["error-message"]
    nodes = answer(flwr(federation.operator_home, "supernode", "ls", "--format", "json"))["nodes"]
    assert len(nodes) == 1, nodes  # owner-0 only


def test_a_stranger_cannot_list_runs_on_the_public_port(federation):
    tried = answer(flwr(federation.stranger_home, "ls", "--format", "json"))
    assert not tried["success"], tried
    assert "403" in tried["error-message"]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/v1/control/list-runs", 403),
        ("POST", "/v1/control/start-run", 403),
        ("POST", "/v1/runtime/pull-messages", 403),
        ("POST", "/v1/fleet/../control/list-runs", 403),
        ("POST", "/v1/fleet/%2e%2e/control/list-runs", 403),
        ("GET", "/v1/fleet/pull-messages", 403),
        ("POST", "/v1/fleet/register-node", 403),  # node authentication is on
        ("GET", "/docs", 404),
        ("GET", "/openapi.json", 404),
    ],
)
def test_the_gateway_refuses_everything_but_the_fleet_api(federation, pki, method, path, status):
    before = _refused_lines(federation)
    connection = http.client.HTTPSConnection(
        "127.0.0.1",
        federation.public,
        context=ssl.create_default_context(cafile=str(pki / "ca.crt")),
        timeout=10,
    )
    connection.request(method, path, body=b"\x08\x01" if method == "POST" else None)
    response = connection.getresponse()
    assert response.status == status
    assert b"Fleet API" in response.read()
    logged = json.loads(_refused_lines(federation)[len(before)])
    assert (logged["method"], logged["path"], logged["status"]) == (method, unquote(path), status)
    assert logged["peer"].startswith("127.0.0.1:")


def _raw_request(federation, pki, lines: list[str], body: bytes) -> bytes:
    """One hand-written HTTP/1.1 request over TLS, as a stranger's own client would send."""
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    with (
        socket.create_connection(("127.0.0.1", federation.public), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(("\r\n".join([*lines, "", ""])).encode() + body)
        return tls.recv(4096)


def test_a_huge_declared_body_is_refused_before_it_reaches_the_superlink(federation, pki):
    """Flower parses a whole body before it checks node authentication: a stranger's
    gigabyte would fill the SuperLink's memory. The gateway refuses it from the header."""
    answer_bytes = _raw_request(
        federation,
        pki,
        [
            "POST /v1/fleet/push-object HTTP/1.1",
            "Host: 127.0.0.1",
            f"Content-Length: {1 << 30}",
            "Content-Type: application/protobuf",
        ],
        b"\x00" * 1024,
    )
    assert answer_bytes.startswith(b"HTTP/1.1 413")
    logged = json.loads(_refused_lines(federation)[-1])
    assert (logged["path"], logged["status"]) == ("/v1/fleet/push-object", 413)


def test_a_streamed_body_over_the_cap_is_cut_off(federation, pki):
    chunk = b"\x00" * (1 << 16)
    body = b"".join(b"%x\r\n" % len(chunk) + chunk + b"\r\n" for _ in range(40)) + b"0\r\n\r\n"
    answer_bytes = _raw_request(
        federation,
        pki,
        ["POST /v1/fleet/pull-messages HTTP/1.1", "Host: 127.0.0.1", "Transfer-Encoding: chunked"],
        body,  # 2.5 MiB where a pull-messages request is a few bytes (cap 1 MiB)
    )
    assert answer_bytes.startswith(b"HTTP/1.1 413")


def test_a_request_with_both_body_lengths_is_refused(federation, pki):
    answer_bytes = _raw_request(
        federation,
        pki,
        [
            "POST /v1/fleet/pull-messages HTTP/1.1",
            "Host: 127.0.0.1",
            "Content-Length: 4",
            "Transfer-Encoding: chunked",
        ],
        b"0\r\n\r\n",
    )
    assert answer_bytes.startswith(b"HTTP/1.1 400") or answer_bytes.startswith(b"HTTP/1.1 413")


def test_the_gateway_forwards_health_and_the_loopback_superlink_is_not_public(federation, pki):
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    connection = http.client.HTTPSConnection("127.0.0.1", federation.public, context=context)
    connection.request("GET", "/health")
    assert connection.getresponse().status == 200
    listening = subprocess.run(["ss", "-Hltn"], capture_output=True, text=True).stdout
    binds = [line.split()[3] for line in listening.splitlines() if line.strip()]
    assert f"127.0.0.1:{federation.internal}" in binds
    assert not [b for b in binds if b.endswith(f":{federation.internal}") and "127.0.0.1" not in b]


def _refused_lines(federation) -> list[str]:
    log = federation.state / "logs" / "gateway-refused.jsonl"
    return log.read_text().splitlines() if log.exists() else []


def _wait_for_refusal(federation, run_id: int, timeout_s: float = 90) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for entry in verify_log(federation.owner_audit).entries:
            if entry["type"] == "foreign-app-refused" and entry["data"]["run-id"] == run_id:
                return entry["data"]
        assert federation.owner.running, federation.owner.log_text()[-3000:]
        time.sleep(0.5)
    raise AssertionError(f"no refusal of run {run_id}: {federation.owner.log_text()[-3000:]}")


def _submit_on_loopback(federation, app: Path) -> int:
    """What a compromised operator account could do: the Control API on 127.0.0.1."""
    started = answer(flwr(federation.operator_home, "run", str(app), "--format", "json"))
    assert started["success"], started
    return int(started["run-id"])


def _wait_until_finished(federation, run_id: int, timeout_s: float = 90) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = next(r for r in operator_runs(federation) if int(r["run-id"]) == run_id)
        if run["status"].startswith("finished"):
            return run
        time.sleep(1)
    raise AssertionError(f"run {run_id} did not finish: the refused task must not hang")


@pytest.mark.parametrize(
    ("name", "clientapp", "named_in_reason"),
    [
        # a ClientApp of its own: not the one fedshield ships
        ("exfiltrate", "stranger_client:app", "fedshield.client.app:app"),
        # names fedshield's ClientApp, but ships a shadow package of that name
        ("shadow", "fedshield.client.app:app", "fedshield/client/app.py"),
    ],
)
def test_a_foreign_clientapp_reaching_the_owner_is_refused_and_never_runs(
    federation, tmp_path, name, clientapp, named_in_reason
):
    marker = tmp_path / "marker"
    app = write_foreign_app(tmp_path / "app", name, clientapp, marker, federation.data_file)
    run_id = _submit_on_loopback(federation, app)
    refusal = _wait_for_refusal(federation, run_id)
    assert refusal["clientapp"] == clientapp
    assert refusal["fab-name"] == f"stranger/{name}==1.0.0"
    assert len(refusal["fab-hash"]) == 64 and named_in_reason in refusal["reason"]
    _wait_until_finished(federation, run_id)
    assert not marker.exists()
    log = verify_log(federation.owner_audit)
    assert log.ok, log.problem


def test_the_fab_fedshield_ships_is_admitted(tmp_path):
    from flwr.cli.build import build_fab_from_disk

    from fedshield.client.executor import check_fab_is_fedshield

    identity = check_fab_is_fedshield(build_fab_from_disk(write_app_dir(tmp_path / "app")))
    assert identity["clientapp"] == "fedshield.client.app:app"


def test_server_start_reports_the_refusals_when_it_stops(federation):
    """Last in this module: it stops the shared server."""
    refused = len(_refused_lines(federation))
    assert refused > 0
    federation.server.stop(grace_s=15)
    assert f"fleet gateway refused {refused} request(s)" in federation.server.log_text()


def _task_for(state: Path, node_id: int, timeout_s: float = 240) -> tuple[str, int, str]:
    """(message id, run id, group id) of a task the server sent ``node_id``: what the
    attacker needs and, here, reads from the SuperLink's database."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with sqlite3.connect(state / "superlink.db", timeout=5) as db:
                rows = db.execute(
                    "SELECT message_id, dst_node_id, run_id, group_id FROM message_ins"
                ).fetchall()
        except sqlite3.Error:
            rows = []
        for message_id, dst, run_id, group_id in rows:
            if dst is not None and dst % (1 << 64) == node_id:
                return message_id, run_id % (1 << 64), group_id or ""
        time.sleep(0.2)
    raise AssertionError(f"no task for node {node_id} within {timeout_s:.0f} s")


def test_a_reply_pushed_for_another_owners_task_is_refused_at_the_gateway(
    pki, data, tmp_path, processes
):
    """owner-1 holds a registered key and authenticates; it pushes a reply for owner-0's
    task naming owner-0 as the sender. Flower's SuperLink would store it as owner-0's
    (docs: NOTES-stack "Integrity facts"); the gateway refuses it and logs both nodes,
    and the run aggregates owner-0's own update only, named by owner-0's key."""
    from cryptography.hazmat.primitives import serialization
    from flwr.proto.fleet_pb2 import (
        ActivateNodeRequest,
        DeactivateNodeRequest,
        PushMessagesRequest,
    )
    from flwr.proto.message_pb2 import Message as MessageProto
    from flwr.proto.message_pb2 import ObjectTree
    from flwr.proto.node_pb2 import Node
    from flwr.supercore.interceptors.http.runtime_version import (
        RuntimeVersionHttpInterceptor,
    )
    from flwr.supernode.fleet_http_client import FleetHttpClient
    from flwr.supernode.node_auth_http_interceptor import NodeAuthHttpInterceptor

    served = start_federation(
        processes, pki, data, tmp_path, 2, "num-rounds=1", "round-timeout-s=90"
    )
    server, port, state = served.server, served.port, served.state
    registry = {o["name"]: o for o in json.loads((state / "owners.json").read_text())["owners"]}
    victim, attacker = (int(registry[n]["node-id"]) for n in ("owner-0", "owner-1"))
    start_owner(processes, pki, data, port, "owner-0", tmp_path / "owner-0")
    key = serialization.load_ssh_private_key((pki / "owner-1.key").read_bytes(), password=None)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with FleetHttpClient.from_server_address(
        f"127.0.0.1:{port}",
        False,
        (pki / "ca.crt").read_bytes(),
        interceptors=[
            RuntimeVersionHttpInterceptor(component_name="SuperNode"),
            NodeAuthHttpInterceptor(key, key.public_key()),
        ],
    ) as client:
        node = client.ActivateNode(ActivateNodeRequest(public_key=pem, heartbeat_interval=600))
        assert node.node_id == attacker
        task_id, run_id, group_id = _task_for(state, victim)
        forged = MessageProto()
        forged.metadata.run_id = run_id
        forged.metadata.message_id = "f" * 64
        forged.metadata.src_node_id = victim  # "I am owner-0"
        forged.metadata.reply_to_message_id = task_id
        forged.metadata.group_id = group_id
        forged.metadata.message_type = "train"
        forged.metadata.ttl = 600.0
        forged.metadata.created_at = time.time()
        with pytest.raises(httpx.HTTPStatusError) as refused:
            client.PushMessages(
                PushMessagesRequest(
                    node=Node(node_id=attacker),
                    messages_list=[forged],
                    message_object_trees=[ObjectTree(object_id="f" * 64)],
                )
            )
        assert refused.value.response.status_code == 403
        assert f"claiming to come from node {victim}" in refused.value.response.text
        client.DeactivateNode(DeactivateNodeRequest(node_id=attacker))

    logged = [json.loads(line) for line in (state / "logs" / "gateway-refused.jsonl").open()]
    (entry,) = [e for e in logged if e["path"] == "/v1/fleet/push-messages"]
    assert (entry["status"], entry["authenticated-node-id"], entry["claimed-src-node-id"]) == (
        403,
        attacker,
        victim,
    )
    assert entry["reply-to-message-id"] == task_id[:80]
    assert entry["fingerprint"] == ssh_public_key_fingerprint(pki / "owner-1.pub")

    assert server.wait(timeout_s=600) == 0, server.log_text()[-4000:]
    owner_0 = ssh_public_key_fingerprint(pki / "owner-0.pub")
    rounds = json.loads((tmp_path / "run" / "metrics.json").read_text())["rounds"]
    (round_1,) = [r for r in rounds if r["round"] == 1]
    assert round_1["participants"] == [owner_0]
    assert round_1["labels-self-declared"] == {owner_0: "owner-0"}
    server_log = verify_log(tmp_path / "run" / "audit" / "server" / "audit.jsonl")
    assert server_log.ok, server_log.problem
    received = [e["data"] for e in server_log.entries if e["type"] == "update-received"]
    assert [(d["node-id"], d["owner"]) for d in received] == [(victim, owner_0)]
