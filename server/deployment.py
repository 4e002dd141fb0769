"""Deploying a run through Flower's ``flwr`` CLI on the loopback SuperLink.

``fedshield server start`` (server/operator.py) = start the SuperLink and the Fleet
gateway (server/superlink.py) -> write the ``flwr`` CLI's connection -> register the
data owners' node keys (recorded in the owner registry, server/owner_registry.py) ->
wait for the nodes -> ``flwr run`` the fedshield apps with the run configuration -> stop.
This module holds the steps that go through ``flwr``. Guarantee: a ``flwr`` step counts
as done only when its JSON answer does not say it failed ("success"): ``flwr`` exits 0
on some failures, so its exit code alone is never trusted.

The FAB that ``flwr run`` ships holds only a generated ``pyproject.toml``: the code
that runs is the fedshield package installed on each side (Flower imports the app
components from it), so operator and owners must run the same fedshield version; the
version is part of the training plan and the audit log.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

from fedshield.common.config import RunConfig
from fedshield.common.errors import ConfigError
from fedshield.common.pki import CA_CERT, ssh_public_key_fingerprint
from fedshield.common.processes import flower_binary, flower_env
from fedshield.common.toml_text import write_toml
from fedshield.server.owner_registry import refuse_removed_key, remember_registration
from fedshield.server.superlink import DeploymentError, SuperLinkSettings

CONNECTION = "fedshield"


def write_connection_config(settings: SuperLinkSettings) -> None:
    """The ``flwr`` CLI's connection to this SuperLink ($FLWR_HOME/config.toml)."""
    settings.flwr_home.mkdir(parents=True, exist_ok=True)
    connection: dict = {"address": settings.superlink_address}
    if settings.insecure:
        connection["insecure"] = True
    else:
        connection["root-certificates"] = str((settings.pki_dir / CA_CERT).resolve())
    write_toml(
        settings.flwr_home / "config.toml",
        {"superlink": {"default": CONNECTION}, f"superlink.{CONNECTION}": connection},
    )


def flwr_cli(flwr_home: Path, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess:
    """The ``flwr`` CLI with the connection ``write_connection_config`` wrote in ``flwr_home``."""
    return subprocess.run(
        [flower_binary("flwr"), *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=flower_env(flwr_home),
    )


def _flwr(
    settings: SuperLinkSettings, *args: str, timeout_s: float = 60
) -> subprocess.CompletedProcess:
    return flwr_cli(settings.flwr_home, *args, timeout_s=timeout_s)


def register_node_keys(settings: SuperLinkSettings, public_keys: list[Path]) -> list[dict]:
    """Register each owner's public key; a key already registered is kept as it is.

    Every registration is recorded in the state folder's owner registry
    (``load_owner_registry``), which ``server status`` and ``server remove-owner`` read."""
    registered = []
    for key in public_keys:
        if not key.is_file():
            raise ConfigError(
                f"{key}: node public key not found (the owner makes it with `fedshield pki node NAME`)"
            )
        fingerprint = ssh_public_key_fingerprint(key)
        refuse_removed_key(settings.state_dir, key, fingerprint)
        proc = _flwr(settings, "supernode", "register", str(key), CONNECTION, "--format", "json")
        output = proc.stdout + proc.stderr
        try:
            answer = json.loads(proc.stdout)
        except ValueError:
            answer = {}
        # `flwr supernode register --format json` exits 0 when it fails: read "success".
        if proc.returncode == 0 and answer.get("success", True) is not False:
            node_id = answer.get("node-id", answer.get("node_id", answer.get("id")))
            remember_registration(settings.state_dir, key, fingerprint, node_id)
            registered.append({"key": str(key), "fingerprint": fingerprint, "node-id": node_id})
        elif "already in use" in output:
            remember_registration(settings.state_dir, key, fingerprint, None)
            registered.append(
                {"key": str(key), "fingerprint": fingerprint, "node-id": "already registered"}
            )
        else:
            raise DeploymentError(f"registering {key} failed: {output.strip()[-800:]}")
    return registered


def _flwr_answer(proc: subprocess.CompletedProcess, what: str) -> dict:
    """The JSON ``flwr ... --format json`` printed; its "success", not its exit code, counts."""
    try:
        answer = json.loads(proc.stdout)
    except ValueError:
        answer = {}
    if proc.returncode != 0 or answer.get("success") is not True:
        said = answer.get("error-message") or proc.stdout + proc.stderr
        # flwr's message opens with its progress lines ("Using SuperLink ..."): the cause is last.
        detail = next((line for line in reversed(said.splitlines()) if line.strip()), "no output")
        raise DeploymentError(f"{what} failed: {detail}")
    return answer


def list_nodes(flwr_home: Path) -> list[dict]:
    """``flwr supernode ls`` on the loopback SuperLink: dicts with "node-id" (a string),
    "status" (registered, online, offline, unregistered), "online-at", "offline-at", ...
    (flwr 1.42 lists no public key or name). DeploymentError when it cannot be reached."""
    proc = flwr_cli(flwr_home, "supernode", "ls", CONNECTION, "--format", "json", timeout_s=30)
    return list(_flwr_answer(proc, "listing the SuperNodes").get("nodes", []))


def unregister_node(flwr_home: Path, node_id: int) -> None:
    """``flwr supernode unregister``: the SuperLink refuses the node from now on."""
    proc = flwr_cli(
        flwr_home, "supernode", "unregister", str(node_id), CONNECTION, "--format", "json"
    )
    _flwr_answer(proc, f"unregistering node {node_id}")


def online_nodes(settings: SuperLinkSettings) -> int:
    try:
        nodes = list_nodes(settings.flwr_home)
    except DeploymentError:
        return 0
    return sum(1 for node in nodes if node.get("status") == "online")


# How often the operator hears how many SuperNodes are online while it waits.
NODE_PROGRESS_EVERY_S = 15.0


def wait_for_nodes(
    settings: SuperLinkSettings,
    count: int,
    timeout_s: float,
    on_progress: Callable[[int, float], None] | None = None,
) -> None:
    """Wait until ``count`` SuperNodes are online; ``on_progress(online, waited_s)`` is
    called when the number online changes and every ``NODE_PROGRESS_EVERY_S``."""
    start = time.monotonic()
    deadline = start + timeout_s
    reported: tuple[int, float] | None = None
    while time.monotonic() < deadline:
        online = online_nodes(settings)
        if online >= count:
            return
        waited = time.monotonic() - start
        if on_progress is not None and (
            reported is None
            or online != reported[0]
            or waited - reported[1] >= NODE_PROGRESS_EVERY_S
        ):
            on_progress(online, waited)
            reported = (online, waited)
        time.sleep(1.0)
    raise DeploymentError(
        f"only {online_nodes(settings)} of {count} SuperNodes came online in {timeout_s:.0f} s; "
        "check that each owner ran `fedshield client start` with a registered key and the right CA"
    )


def write_app_dir(directory: Path) -> Path:
    """A Flower app directory whose FAB names the installed fedshield components."""
    directory.mkdir(parents=True, exist_ok=True)
    write_toml(
        directory / "pyproject.toml",
        {
            "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
            "project": {
                "name": "fedshield-federation",
                "version": version("fedshield"),
                "description": "fedshield run (code: the installed fedshield package)",
                "license": "Apache-2.0",
                "dependencies": [],
            },
            "tool.flwr.app": {"publisher": "fedshield"},
            "tool.flwr.app.components": {
                "serverapp": "fedshield.server.app:app",
                "clientapp": "fedshield.client.app:app",
            },
            "tool.flwr.app.config": RunConfig().as_dict(),
        },
        mode=0o644,
    )
    return directory


def launch_run(settings: SuperLinkSettings, values: dict, log_path: Path, timeout_s: float) -> int:
    """``flwr run`` the apps with ``values`` over the defaults; streams and returns its status."""
    app_dir = write_app_dir(settings.state_dir / "app")
    args = [
        flower_binary("flwr"),
        "run",
        str(app_dir),
        CONNECTION,
        "--stream",
        "--run-config",
        # A file, parsed whole: Flower's key=value form ends a value at its first quote.
        str(write_toml(settings.state_dir / "run-config.toml", {None: values})),
    ]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=flower_env(settings.flwr_home),
        )
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        try:
            for line in proc.stdout:
                log.write(line)
                sys.stdout.write(line.decode(errors="replace"))
                if time.monotonic() > deadline:
                    raise DeploymentError(
                        f"the run did not finish within {timeout_s:.0f} s; see {log_path}"
                    )
            return proc.wait()
        finally:  # also on Ctrl-C and SIGTERM: no `flwr run` left behind
            if proc.poll() is None:
                proc.kill()
                proc.wait()
