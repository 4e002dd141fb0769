"""The operator's federation lifecycle behind ``fedshield server start``.

start the SuperLink (loopback) and the Fleet-only gateway -> register the owners' node
keys -> wait for their SuperNodes -> ``flwr run`` the fedshield apps -> (keep serving)
-> stop both. Every step reports through ``say`` so the CLI only prints.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fedshield.common.config import RunConfig
from fedshield.common.errors import FedshieldError
from fedshield.server import deployment as dep


@dataclass(frozen=True)
class FederationRequest:
    """What the operator asked for: node keys, how long to wait, the run's settings."""

    node_keys: list[Path]
    run_values: dict
    wait_nodes: int | None = None
    node_timeout_s: float = 300.0
    run_timeout_s: float = 7200.0
    keep_running: bool = False


def check_request(settings: dep.SuperLinkSettings, request: FederationRequest) -> None:
    """Refuse bad run keys, a missing encoder and unauthenticated keys before starting."""
    plan = RunConfig.from_dict(request.run_values)
    if plan.model == "minilm":
        from fedshield.common import minilm

        minilm.require_installed()  # the server builds and evaluates the model too
    if settings.insecure and request.node_keys:
        raise FedshieldError(
            "--insecure cannot authenticate nodes; drop --node-key or drop --insecure"
        )


def serve_federation(
    settings: dep.SuperLinkSettings, request: FederationRequest, say: Callable[[str], None]
) -> Path:
    """Run the whole lifecycle; returns the run's output folder."""
    check_request(settings, request)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    dep.write_connection_config(settings)
    link = dep.ServingSuperLink(settings)
    values = dict(request.run_values)
    out = Path(
        values.get("out-dir") or settings.state_dir / "runs" / time.strftime("%Y%m%d-%H%M%S")
    )
    try:
        say(
            f"Fleet gateway serving owners on {settings.host}:{settings.port} "
            f"({'PLAINTEXT' if settings.insecure else 'TLS, node authentication on'}; Fleet API "
            f"only); SuperLink with the Control API on {settings.superlink_address} (loopback only)"
        )
        keys = request.node_keys
        registered = dep.register_node_keys(settings, keys) if keys else []
        for node in registered:
            say(f"registered {node['key']} ({node['fingerprint']}): node {node['node-id']}")
        expected = request.wait_nodes if request.wait_nodes is not None else len(keys)
        if expected:
            say(f"waiting for {expected} SuperNodes ...")
            dep.wait_for_nodes(settings, expected, request.node_timeout_s)
        values = {
            "min-train-nodes": max(expected, 1),
            **values,
            "out-dir": str(out.resolve()),
            "transport": dep.transport_evidence(settings, registered),
        }
        logs = settings.state_dir / "logs"
        status = dep.launch_run(settings, values, logs / "run.log", request.run_timeout_s)
        if status != 0:
            raise dep.DeploymentError(f"flwr run exited with {status}; see {logs}")
        if request.keep_running:
            say("SuperLink keeps running; Ctrl-C stops it.")
            while link.running:
                time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        link.stop()
        say(
            f"fleet gateway refused {link.refused_requests()} request(s) to non-Fleet paths "
            f"(log: {settings.refused_log})"
        )
    return out
