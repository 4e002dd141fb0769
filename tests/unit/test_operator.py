"""The operator's lifecycle helpers that parse what Flower's CLI answers."""

from __future__ import annotations

import json
import subprocess

import pytest

from fedshield.common.pki import create_node_key
from fedshield.server import deployment as dep
from fedshield.server.superlink import DeploymentError, SuperLinkSettings
from tests.support.ports import free_port


@pytest.fixture()
def settings(tmp_path):
    return SuperLinkSettings(
        pki_dir=tmp_path / "pki",
        state_dir=tmp_path / "state",
        port=free_port(),
        internal_port=free_port(),
    )


def answering(payload: dict, returncode: int = 0):
    """What `flwr supernode register --format json` printed (it exits 0 on failure too)."""

    def run(settings, *args, timeout_s=60):
        return subprocess.CompletedProcess(args, returncode, json.dumps(payload), "")

    return run


def test_a_failed_registration_is_an_error_even_when_flwr_exits_0(settings, tmp_path, monkeypatch):
    pub, _ = create_node_key(tmp_path / "pki", "owner-1")
    monkeypatch.setattr(
        dep, "_flwr", answering({"success": False, "error-message": "database is locked"})
    )
    with pytest.raises(DeploymentError, match="database is locked"):
        dep.register_node_keys(settings, [pub])


def test_a_key_already_registered_is_kept(settings, tmp_path, monkeypatch):
    pub, _ = create_node_key(tmp_path / "pki", "owner-1")
    monkeypatch.setattr(
        dep,
        "_flwr",
        answering({"success": False, "error-message": "Public key already in use"}),
    )
    (node,) = dep.register_node_keys(settings, [pub])
    assert node["node-id"] == "already registered"


def test_a_registration_returns_the_node_id(settings, tmp_path, monkeypatch):
    pub, _ = create_node_key(tmp_path / "pki", "owner-1")
    monkeypatch.setattr(dep, "_flwr", answering({"success": True, "node-id": 42}))
    (node,) = dep.register_node_keys(settings, [pub])
    assert node["node-id"] == 42
