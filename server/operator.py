"""The operator's federation lifecycle behind ``fedshield server start``.

check the request (classes, evaluation data, the model to continue) -> publish the
federation's class list (federation.json, served by the gateway) -> start the SuperLink
(loopback) and the Fleet-only gateway -> register the owners' node keys -> wait for
their SuperNodes -> ``flwr run`` the fedshield apps -> (keep serving) -> stop both.
Every step reports through ``say`` so the CLI only prints.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from fedshield.common.config import RunConfig
from fedshield.common.errors import ConfigError, FedshieldError
from fedshield.common.federation_info import write_federation_info
from fedshield.common.plan import CLASS_NAME
from fedshield.server import deployment as dep
from fedshield.server.owner_registry import set_max_weights
from fedshield.server.superlink import (
    DeploymentError,
    ServingSuperLink,
    SuperLinkSettings,
    transport_evidence,
)


@dataclass(frozen=True)
class FederationRequest:
    """What the operator asked for: node keys, how long to wait, the run's settings."""

    node_keys: list[Path]
    run_values: dict
    wait_nodes: int | None = None
    node_timeout_s: float = 300.0
    run_timeout_s: float = 7200.0
    keep_running: bool = False
    # key file stem -> the most records that owner weighs in an average (its registered
    # size); owners not named weigh at most server/identity.py DEFAULT_MAX_WEIGHT
    max_weights: dict[str, int] = dataclasses.field(default_factory=dict)


def check_request(settings: SuperLinkSettings, request: FederationRequest) -> RunConfig:
    """Refuse a run without explicit classes and evaluation data, a missing encoder and
    unauthenticated keys before starting; returns the run's configuration."""
    plan = RunConfig.from_dict(request.run_values)
    if "data" in request.run_values:
        raise ConfigError(
            "run config data=...: a deployed server holds no training data (the owners do); "
            "name the server's labelled evaluation file with --eval-data"
        )
    if not plan.class_names():
        raise ConfigError(
            "the federation's classes are not named: pass --classes with every label, "
            "comma-separated, in the model's order (owners check their labels against it)"
        )
    odd = [name for name in plan.class_names() if not CLASS_NAME.fullmatch(name)]
    if odd:
        raise ConfigError(
            f"--classes: {odd!r} are not class names owners accept (letters, digits, spaces "
            "and ._-+&/ only, 1-100 characters); relabel them in your data and evaluation file"
        )
    if not plan.eval_data:
        raise ConfigError(
            "no evaluation data: pass --eval-data with the operator's labelled held-out file "
            "(CSV, JSON Lines or Parquet; its labels must be among --classes)"
        )
    from fedshield.common.simulation_split import heldout_test_split

    evaluation = heldout_test_split(plan)  # the file exists, has the columns, known labels
    if plan.continue_from:
        from fedshield.server.outputs import check_continuation

        check_continuation(plan, evaluation.classes)
    if plan.class_descriptions:
        from fedshield.common.model import ModelSpec
        from fedshield.server.class_descriptions import (
            check_description_features,
            class_descriptions,
        )

        described = class_descriptions(plan.class_descriptions, plan.class_names())
        check_description_features(ModelSpec.from_config(plan), described)  # every class
    if plan.model == "minilm":
        from fedshield.common import minilm

        minilm.require_installed()  # the server builds and evaluates the model too
    if settings.insecure and request.node_keys:
        raise FedshieldError(
            "--insecure cannot authenticate nodes; drop --node-key or drop --insecure"
        )
    return plan


def publish_federation(settings: SuperLinkSettings, plan: RunConfig) -> Path:
    """federation.json: what owners may read before joining (served by the gateway)."""
    public = ("num-rounds", "target-epsilon", "noise-multiplier", "delta", "max-grad-norm")
    values = plan.as_dict()
    return write_federation_info(
        settings.state_dir,
        {
            "classes": list(plan.class_names() or ()),
            "model": plan.model,
            "fedshield-version": version("fedshield"),
            "dp": plan.dp,
            "plan": {key: values[key] for key in public},
        },
    )


def serve_federation(
    settings: SuperLinkSettings, request: FederationRequest, say: Callable[[str], None]
) -> Path:
    """Run the whole lifecycle; returns the run's output folder."""
    values = dict(request.run_values)
    runs = settings.state_dir / "runs"
    if values.get("continue-from"):
        from fedshield.server.outputs import resolve_continue_from

        parent = resolve_continue_from(str(values["continue-from"]), runs)
        values["continue-from"] = str(parent.resolve())
        say(f"starting from the model of {parent} (public: no privacy cost)")
    if values.get("eval-data"):
        values["eval-data"] = str(Path(values["eval-data"]).expanduser().resolve())
    plan = check_request(settings, dataclasses.replace(request, run_values=values))
    # 0700: the SuperLink's database there holds the owners' replies and node keys, and
    # owners.json their registrations (itself 0600).
    settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    publish_federation(settings, plan)
    say(f"classes: {', '.join(plan.class_names() or ())}; evaluation data: {plan.eval_data}")
    dep.write_connection_config(settings)
    keys = request.node_keys
    registered: list[dict] = []

    def register() -> None:  # before the public port opens: no owner meets an unknown key
        registered.extend(dep.register_node_keys(settings, keys) if keys else [])
        if request.max_weights:
            set_max_weights(settings.state_dir, request.max_weights)

    link = ServingSuperLink(settings, before_public=register)
    out = Path(values.get("out-dir") or runs / time.strftime("%Y%m%d-%H%M%S"))
    try:
        say(
            f"Fleet gateway serving owners on {settings.host}:{settings.port} "
            f"({'PLAINTEXT' if settings.insecure else 'TLS, node authentication on'}; Fleet API "
            f"only); SuperLink with the Control API on {settings.superlink_address} (loopback only)"
        )
        for node in registered:
            say(f"registered {node['key']} ({node['fingerprint']}): node {node['node-id']}")
        expected = request.wait_nodes if request.wait_nodes is not None else len(keys)
        if expected:
            say(f"waiting for {expected} SuperNodes (up to {request.node_timeout_s:.0f} s) ...")
            dep.wait_for_nodes(
                settings,
                expected,
                request.node_timeout_s,
                lambda online, waited: say(
                    f"  {online} of {expected} SuperNodes online after {waited:.0f} s"
                ),
            )
        values = {
            "min-train-nodes": max(expected, 1),
            **values,
            "data": "",  # a deployed server holds no training data: the owners do
            "out-dir": str(out.resolve()),
            "transport": transport_evidence(settings, registered),
        }
        logs = settings.state_dir / "logs"
        status = dep.launch_run(settings, values, logs / "run.log", request.run_timeout_s)
        if status != 0:
            raise DeploymentError(f"flwr run exited with {status}; see {logs}")
        if request.keep_running:
            say("SuperLink keeps running; Ctrl-C stops it.")
            while link.running:
                time.sleep(1)
    except KeyboardInterrupt:
        say("stopping: interrupted")
    finally:
        link.stop()
        say(
            f"fleet gateway refused {link.refused_requests()} request(s): non-Fleet paths, "
            f"oversized bodies, replies pushed for another node (log: {settings.refused_log})"
        )
    return out
