"""Server plus simulated data owners on one machine (Flower's Simulation Engine on Ray).

It composes both roles, so it lives above them: the server and the client packages do
not import each other.

Each virtual SuperNode runs the same ClientApp a deployed owner runs; its data is one
partition of the run's data set and its ledger lives under the run's ledger directory.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import warnings

from fedshield.common.config import RunConfig
from fedshield.common.errors import ConfigError, SimulationEngineFailed
from fedshield.server.app import RoundCallback
from fedshield.server.validating_strategy import UpdateObserver

log = logging.getLogger("fedshield.server")


def backend_config(num_clients: int, device: str) -> dict:
    """Ray resources: one CPU per virtual client, and a GPU share when one is there."""
    import torch

    use_gpu = device != "cpu" and torch.cuda.is_available()
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


def start_ray(init_args: dict) -> None:
    """Start Ray here, before Flower's engine (which then uses it as it is): a Ray that
    cannot start ends the run with one line, at once or within ``RAY_START_TIMEOUT_S``,
    instead of a traceback and a hang. Same arguments as Flower's own start."""
    import ray

    if ray.is_initialized():
        return
    pythonpath = os.pathsep.join(
        filter(None, [os.pathsep.join(sys.path), os.environ.get("PYTHONPATH")])
    )
    os.environ["PYTHONPATH"] = pythonpath
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
            ray.init(runtime_env={"env_vars": {"PYTHONPATH": pythonpath}}, **init_args)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise SimulationEngineFailed(
            f"Ray (the simulation engine) could not start ({type(exc).__name__}: {first}); "
            f"nothing ran and nothing was charged; {RAY_START_ADVICE}"
        ) from None
    finally:
        started.set()


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
    engine = backend_config(num_clients, config.device)
    start_ray({"include_dashboard": False, **engine["init_args"]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        flower_run_simulation(
            server_app=make_server_app(overrides, on_round, on_update),
            client_app=make_client_app(overrides),
            num_supernodes=num_clients,
            backend_config=engine,
        )
