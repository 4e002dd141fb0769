"""Server plus simulated data owners on one machine (Flower's Simulation Engine on Ray).

It composes both roles, so it lives above them: the server and the client packages do
not import each other.

Each virtual SuperNode runs the same ClientApp a deployed owner runs; its data is one
partition of the run's data set and its ledger lives under the run's ledger directory.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import uuid
import warnings
from pathlib import Path

from fedshield.common.config import RunConfig
from fedshield.common.errors import ConfigError, SimulationEngineFailed
from fedshield.server.app import RoundCallback
from fedshield.server.validating_strategy import UpdateObserver

log = logging.getLogger("fedshield.server")


def backend_config(num_clients: int, device: str, gpus: float | None = None) -> dict:
    """Ray resources: one CPU per virtual client, and a GPU share when one is there.

    ``gpus``: the GPUs of the Ray cluster the run attached to (None: this machine's)."""
    import torch

    if gpus is None:
        gpus = 1.0 if torch.cuda.is_available() else 0.0
    use_gpu = device != "cpu" and gpus > 0
    # Up to 4 clients share one GPU; without a GPU, none is requested (Ray would hang).
    num_gpus = 1.0 / min(num_clients, 4) if use_gpu else 0.0
    return {
        "client_resources": {"num_cpus": 1, "num_gpus": num_gpus},
        "init_args": {
            "num_cpus": os.cpu_count() or 1,
            "include_dashboard": False,
            "log_to_driver": False,
            "logging_level": logging.ERROR,
        },
    }


def check_inputs(config: RunConfig, num_clients: int) -> tuple[list[int], int]:
    """Load, validate and partition before anything starts: (owner sizes, held-out size).

    Bad input (a missing column, delta >= 1/N at some owner) fails here, at once.
    """
    from fedshield.common.privacy import check_delta
    from fedshield.common.simulation_split import heldout_test_split, simulated_owner_data

    if num_clients < 1:
        raise ConfigError(f"--clients must be >= 1, got {num_clients}")
    test = heldout_test_split(config)
    if config.class_descriptions:  # read now, not after the owners' preparation
        from fedshield.common.model import ModelSpec
        from fedshield.server.class_descriptions import (
            check_description_features,
            class_descriptions,
        )

        described = class_descriptions(config.class_descriptions, test.classes)
        check_description_features(ModelSpec.from_config(config), described)
    sizes = [len(simulated_owner_data(config, i, num_clients)) for i in range(num_clients)]
    if config.dp:
        for size in sizes:
            check_delta(config.delta, size)
    return sizes, len(test)


# How long Ray may take to start before the run gives up with one line (a loaded machine,
# a full /tmp, a blocked port made it hang behind Flower's threads for minutes).
RAY_START_TIMEOUT_S = float(os.environ.get("FEDSHIELD_RAY_START_TIMEOUT_S", "60"))
RAY_START_ADVICE = (
    "free some CPU, memory or space in /tmp (Ray's session folder), or stop stale Ray "
    "processes (`ray stop`), then run again"
)


def _actor_environment() -> dict[str, str]:
    """What the owners' actors must see of this process's environment: the import path
    and fedshield's own settings (a cluster's workers do not inherit the driver's)."""
    pythonpath = os.pathsep.join(
        filter(None, [os.pathsep.join(sys.path), os.environ.get("PYTHONPATH")])
    )
    os.environ["PYTHONPATH"] = pythonpath
    kept = {k: v for k, v in os.environ.items() if k.startswith("FEDSHIELD_")}
    return {"PYTHONPATH": pythonpath, "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0", **kept}


def start_ray(init_args: dict, address: str = "") -> None:
    """Start Ray here, or attach to the cluster at ``address``, before Flower's engine
    (which then uses it as it is): a Ray that cannot start, or a cluster that does not
    answer, ends the run with one line, at once or within ``RAY_START_TIMEOUT_S``,
    instead of a traceback and a hang. Same arguments as Flower's own start."""
    import ray

    if ray.is_initialized():
        return
    if address:
        check_cluster_answers(address)
        # Attaching: the cluster's resources are its own (Ray refuses num_cpus here).
        init_args = {"address": address, "log_to_driver": False, "logging_level": logging.ERROR}
    started = threading.Event()

    def give_up_if_hung() -> None:
        if not started.wait(RAY_START_TIMEOUT_S):
            # ray.init cannot be interrupted from here: say why, then end the process.
            sys.stderr.write(
                f"error: Ray (the simulation engine) did not start within "
                f"{RAY_START_TIMEOUT_S:.0f} s; nothing ran and nothing was charged; "
                f"{RAY_START_ADVICE}\n"
            )
            sys.stderr.flush()
            os._exit(SimulationEngineFailed.exit_code)

    threading.Thread(target=give_up_if_hung, daemon=True).start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ray.init(runtime_env={"env_vars": _actor_environment()}, **init_args)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        where = f"the Ray cluster at {address}" if address else "Ray (the simulation engine)"
        raise SimulationEngineFailed(
            f"{where} could not be used ({type(exc).__name__}: {first}); nothing ran and "
            f"nothing was charged; {RAY_START_ADVICE}"
        ) from None
    finally:
        started.set()


def check_cluster_answers(address: str) -> None:
    """A ``host:port`` that nothing listens on fails here in seconds, with the fix (Ray's
    own attempt retries for a minute, then prints a traceback)."""
    if address == "auto":
        return
    if address.startswith("ray://"):
        raise ConfigError(
            f"--ray-address {address}: Ray Client addresses are not supported (the owners' "
            "ledgers and logs must land under --out); run fedshield on a node of the cluster "
            "and give the head's GCS address, host:port (what `ray start --head` prints)"
        )
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(
            f"--ray-address {address!r}: give the head's GCS address as host:port (what "
            "`ray start --head` prints), or 'auto' for the cluster running on this machine"
        )
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as exc:
        raise SimulationEngineFailed(
            f"no Ray cluster answers at {address} ({exc.strerror or exc}); start one with "
            f"`ray start --head --port {port}`, or fix --ray-address (or RAY_ADDRESS)"
        ) from None


def _sees(paths: list[str]) -> list[str]:
    """On a cluster node: which of ``paths`` it cannot see."""
    return [path for path in paths if not os.path.exists(path)]


def check_shared_paths(config: RunConfig) -> None:
    """Every alive node of the attached cluster sees --out and --data at the same paths,
    or the run is refused before round 1 with the node that does not: the owners' ledgers,
    caches and audit logs are written where they run, and must land under --out."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    marker = out / f".cluster-check-{uuid.uuid4().hex}"
    marker.write_text("fedshield: every node must see this folder\n")
    paths = [str(marker)] + ([config.data] if Path(config.data).is_file() else [])
    try:
        probe = ray.remote(num_cpus=0)(_sees)
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        pending = [
            probe.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
            ).remote(paths)
            for n in nodes
        ]
        for node, missing in zip(nodes, ray.get(pending, timeout=120), strict=True):
            if missing:
                raise ConfigError(
                    f"Ray node {node.get('NodeManagerAddress')} cannot see {', '.join(missing)}; "
                    "the owners' ledgers, caches and audit logs are written on the node that "
                    "runs them, so mount --out and --data at the same paths on every node "
                    "(a shared file system), or run without --ray-address"
                )
    finally:
        marker.unlink(missing_ok=True)


def run_simulation(
    config: RunConfig,
    num_clients: int,
    on_round: RoundCallback | None = None,
    on_update: UpdateObserver | None = None,
) -> None:
    """Run ``config.num_rounds`` rounds with ``num_clients`` simulated owners; blocks.

    ``on_round`` gets each round's metrics; ``on_update`` every accepted update."""
    from fedshield.client.app import make_client_app
    from fedshield.client.owner import mark_simulated_owners
    from fedshield.server.app import make_server_app

    # The operator plays every owner here; its Ray actors inherit the mark.
    mark_simulated_owners()
    # Keeps Ray from rewriting CUDA_VISIBLE_DEVICES for CPU-only actors (and its warning).
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    from flwr.simulation import run_simulation as flower_run_simulation

    overrides = config.as_dict()
    address = config.ray_address or os.environ.get("RAY_ADDRESS", "").strip()
    engine = backend_config(num_clients, config.device)
    start_ray({"include_dashboard": False, **engine["init_args"]}, address)
    if address:
        import ray

        check_shared_paths(config)
        gpus = float(ray.cluster_resources().get("GPU", 0.0))
        engine = backend_config(num_clients, config.device, gpus) | {"init_args": {}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        flower_run_simulation(
            server_app=make_server_app(overrides, on_round, on_update),
            client_app=make_client_app(overrides),
            num_supernodes=num_clients,
            backend_config=engine,
        )
